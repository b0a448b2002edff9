"""What fusedopt.torch refuses: each error names the param group (and param) and the fix, and
the optimizer is left as it was."""

import pytest
import torch
import torch_loops as loops

import fusedopt.torch as ft


class _OnCuda(torch.Tensor):
    """A CPU tensor that says it is on cuda:0: the device check without a GPU."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def _cuda_looking(shape):
    return torch.nn.Parameter(torch.Tensor._make_subclass(_OnCuda, torch.zeros(shape)))


def _opt():
    return ft.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1)


@pytest.mark.parametrize("flags, message", [
    (dict(differentiable=True), r"param group 0: differentiable=True is not supported"),
    (dict(capturable=True), r"param group 0: capturable=True is not supported"),
    (dict(maximize=1), r"param group 0: maximize must be True or False"),
    (dict(foreach="yes"), r"param group 0: foreach must be None, True or False"),
])
def test_flags_that_would_change_results_are_refused(flags, message):
    with pytest.raises(ValueError, match=message):
        ft.Adam([torch.nn.Parameter(torch.ones(3))], **flags)


@pytest.mark.parametrize("flags", [dict(foreach=True), dict(foreach=False), dict(fused=True),
                                   dict(fused=False)])
def test_foreach_and_fused_mean_nothing_here(flags):
    a, b = (torch.nn.Parameter(torch.ones(3)) for _ in range(2))
    plain, flagged = ft.Adam([a], lr=0.1), ft.Adam([b], lr=0.1, **flags)
    for p, opt in ((a, plain), (b, flagged)):
        p.grad = torch.tensor([1.0, -2.0, 3.0])
        opt.step()
    assert torch.equal(a, b)


@pytest.mark.parametrize("make, kind, message", [
    (lambda: torch.nn.Parameter(torch.ones(3, dtype=torch.complex32)), TypeError,
     r"param group 1, param 0 \(shape \(3,\)\) is torch.complex32: fusedopt steps complex64 "
     "and complex128 params"),
    (lambda: torch.nn.Parameter(torch.ones(3).to(torch.float8_e4m3fn)), TypeError,
     r"param group 1, param 0 \(shape \(3,\)\) has dtype torch.float8_e4m3fn"),
    (lambda: torch.nn.Parameter(torch.ones(4, 6)[:, ::2]), ValueError,
     r"param group 1, param 0 \(shape \(4, 3\)\) has gaps or overlaps in its memory "
     r"\(strides \(6, 2\)\)"),
    (lambda: torch.nn.Parameter(torch.ones(3, dtype=torch.complex64)), ValueError,
     r"param group 1, param 0 \(shape \(3,\)\) is torch.complex64, whose state is complex: "
     "state_dtype must be None, 'float32' or 'float64', got 'bfloat16'"),
])
@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_bad_params_are_refused_and_the_group_is_not_added(make, kind, message):
    opt = _opt()
    group = {"params": [make()]}
    if "state_dtype" in message:
        group["state_dtype"] = "bfloat16"
    with pytest.raises(kind, match=message):
        opt.add_param_group(group)
    assert len(opt.param_groups) == 1 and len(opt._engine.hypers) == 1


def test_a_meta_param_still_on_meta_at_its_first_step_is_refused():
    """Accepted at construction (init on meta, then module.to_empty), but a param with a
    grad and no memory cannot be stepped."""
    meta = torch.nn.Parameter(torch.ones(3, device="meta"))
    real = torch.nn.Parameter(torch.ones(2))
    opt = ft.Adam([real, meta], lr=0.1)
    real.grad, meta.grad = torch.ones(2), torch.ones(3, device="meta")
    with pytest.raises(ValueError, match=r"param group 0, param 1 \(shape \(3,\)\) is on the "
                                         r"meta device, with no memory to update: materialize"):
        opt.step()
    assert torch.equal(real, torch.ones(2)) and not opt.state


def test_a_group_mixing_cpu_and_cuda_tensors_is_refused():
    with pytest.raises(ValueError, match=r"param group 0 mixes CPU and CUDA tensors \(param 0 "
                                         r"is on cpu, param 1 on cuda:0\)"):
        ft.SGD([torch.nn.Parameter(torch.ones(2)), _cuda_looking(2)], lr=0.1)
    opt = _opt()
    with pytest.raises(ValueError, match=r"param group 1 is on cuda but the optimizer's other "
                                         "groups are on cpu"):
        opt.add_param_group({"params": [_cuda_looking(2)]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("group, message", [
    (dict(lr=-1.0), r"param group 1: lr must be a finite number >= 0, got -1.0"),
    (dict(betas=(1.5, 0.9)), r"param group 1: betas\[0\] must be in \[0, 1\), got 1.5"),
    (dict(betas=0.9), r"param group 1: betas must be a pair"),
    (dict(eps=float("nan")), r"param group 1: eps must be a finite number"),
])
def test_bad_hyperparameters_are_named_as_torch_names_them(group, message):
    opt = _opt()
    with pytest.raises(ValueError, match=message):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], **group})
    assert len(opt.param_groups) == 1


def test_a_sparse_grad_is_refused_and_nothing_steps():
    dense, embedded = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4, 2))
    opt = ft.SGD([dense, embedded], lr=0.1)
    dense.grad = torch.ones(3)
    embedded.grad = torch.sparse_coo_tensor([[1]], [[1.0, 1.0]], (4, 2),
                                            check_invariants=True)
    with pytest.raises(TypeError, match=r"param group 0, param 1 \(shape \(4, 2\)\) has a "
                                        r"sparse grad"):
        opt.step()
    assert torch.equal(dense, torch.ones(3)) and torch.equal(embedded, torch.ones(4, 2))


def test_a_scheduler_setting_a_bad_value_is_refused_at_the_step():
    model = loops.mlp()
    x, y = loops.data()
    opt = ft.Adam(model.parameters(), lr=1e-2)
    loops.train(model, opt, 1, x, y)
    opt.param_groups[0]["betas"] = (0.9, 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"param group 0: betas\[1\] must be in \[0, 1\)"):
        loops.train(model, opt, 1, x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    opt.param_groups[0]["betas"] = (0.9, 0.99)
    loops.train(model, opt, 1, x, y)
    assert float(opt.state[next(model.parameters())]["step"]) == 2.0


def test_turning_amsgrad_on_after_the_first_step_is_refused():
    model = loops.mlp()
    x, y = loops.data()
    opt = ft.Adam(model.parameters())
    loops.train(model, opt, 1, x, y)
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="param group 0: the change would need state slots"):
        loops.train(model, opt, 1, x, y)


def test_replacing_param_data_moves_the_state_along():
    """torch.optim reads params each step; fusedopt steps memory. When .data is replaced,
    the engine is rebuilt from the state, so training continues as torch.optim's does."""
    a, b = loops.twins(dtype=torch.float64)
    x, y = loops.data(dtype=torch.float64)
    opt_a, opt_b = ft.Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    for model, opt in ((a, opt_a), (b, opt_b)):
        loops.train(model, opt, 3, x, y)
        first = next(model.parameters())
        first.data = first.data.clone()   # new memory under the same Parameter
        loops.train(model, opt, 3, x, y)
    assert opt_a._rebuilds == 1
    loops.assert_close(a, b)


@pytest.mark.parametrize("cls, group, message", [
    (ft.RMSprop, dict(alpha=1.5), r"param group 0: alpha must be in \[0, 1\)"),
    (ft.Adadelta, dict(rho=1.5), r"param group 0: rho must be in \[0, 1\)"),
])
def test_errors_use_the_classes_own_argument_names(cls, group, message):
    with pytest.raises(ValueError, match=message):
        cls([torch.nn.Parameter(torch.ones(2))], **group)


def test_a_real_grad_for_a_complex_param_is_refused_and_nothing_steps():
    """torch takes such a grad only where the param's grad_dtype was set to None."""
    plain, odd = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(
        torch.ones(3, dtype=torch.complex64))
    opt = ft.Adam([plain, odd], lr=0.1)
    plain.grad, odd.grad = torch.ones(2), torch.ones_like(odd)
    opt.step()
    before = [p.detach().clone() for p in (plain, odd)]
    odd.grad_dtype = None
    odd.grad = torch.ones(3)
    with pytest.raises(TypeError, match=r"param group 0, param 1: the grad is torch.float32 "
                                        "and the param torch.complex64"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip((plain, odd), before))
    assert float(opt.state[plain]["step"]) == 1.0
