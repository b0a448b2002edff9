"""Muon: fusedopt.torch.Muon against torch.optim.Muon in a real autograd loop (50 steps,
non-default hyperparameters, within 1e-6 relative in float32), fusedopt.Muon against the
float64 oracle (tests/reference.py), the batched Newton-Schulz against one matrix at a time,
and the refusals."""

import numpy as np
import pytest
import reference
import torch
from peer_loop import relative, train
from tolerances import VS_REFERENCE

import fusedopt
import fusedopt.torch
from fusedopt.algorithms import muon as muon_algorithm
from fusedopt.backends.matmul import ArrayOps, TorchOps

#: Non-default sets: no Nesterov with match_rms_adamw and fewer iterations; a momentum
#: below 0.5 (the other formula of torch's lerp), other coefficients, eps and more
#: iterations; and torch's defaults with a larger lr.
TORCH_CASES = [
    dict(lr=0.02, weight_decay=0.05, momentum=0.9, nesterov=False,
         adjust_lr_fn="match_rms_adamw", ns_steps=3),
    dict(lr=0.01, weight_decay=0.0, momentum=0.3, ns_coefficients=(2.0, -1.5, 0.5),
         eps=1e-5, ns_steps=7, adjust_lr_fn="original"),
    dict(lr=0.02),
]


def net() -> torch.nn.Module:
    """2-D weights only (torch.optim.Muon takes nothing else): tall, wide and square, two
    of one shape (stepped as one batch), sizes that are not multiples of a vector."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 24, bias=False), torch.nn.Tanh(),
              torch.nn.Linear(24, 13, bias=False), torch.nn.Tanh(),
              torch.nn.Linear(13, 13, bias=False), torch.nn.Tanh(),
              torch.nn.Linear(13, 13, bias=False), torch.nn.Tanh(),
              torch.nn.Linear(13, 1, bias=False)]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("hp", TORCH_CASES, ids=["no-nesterov", "low-momentum", "defaults"])
def test_muon_matches_torch_in_a_training_loop(hp):
    ours, optimizer = train(lambda ps: fusedopt.torch.Muon(ps, **hp), net=net())
    theirs, peer = train(lambda ps: torch.optim.Muon(ps, **hp), net=net())
    moved = max(relative(b, w.detach()) for b, w in zip(theirs, net().parameters()))
    assert moved > 1e-2  # the loop trains: the comparison below is not of untouched params
    for a, b in zip(ours, theirs):
        assert relative(a, b) <= 1e-6
    for p, q in zip(optimizer.param_groups[0]["params"], peer.param_groups[0]["params"]):
        a, b = optimizer.state[p]["momentum_buffer"], peer.state[q]["momentum_buffer"]
        assert relative(a, b) <= 1e-6


def test_muon_checkpoints_load_both_ways():
    _, optimizer = train(lambda ps: fusedopt.torch.Muon(ps, lr=0.02), steps=5, net=net())
    peer = torch.optim.Muon(net().parameters(), lr=0.02)
    peer.load_state_dict(optimizer.state_dict())
    assert set(peer.state_dict()["state"][0]) == {"momentum_buffer"}
    again = fusedopt.torch.Muon(net().parameters(), lr=0.02)
    again.load_state_dict(peer.state_dict())
    key = again.param_groups[0]["params"][0]
    assert torch.equal(again.state[key]["momentum_buffer"],
                       optimizer.state[optimizer.param_groups[0]["params"][0]]["momentum_buffer"])


def test_muon_torch_refuses_what_torch_refuses():
    bias = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"2-D params only.*shape \(3,\)"):
        fusedopt.torch.Muon([torch.nn.Parameter(torch.ones(3, 3)), bias])
    w = torch.nn.Parameter(torch.ones(4, 3))
    for bad, match in ((dict(ns_steps=100), "ns_steps must be an int"),
                       (dict(adjust_lr_fn="rms"), "adjust_lr_fn must be None"),
                       (dict(ns_coefficients=(1.0, 2.0)), "ns_coefficients")):
        with pytest.raises(ValueError, match=match):  # when made (torch: at the step)
            fusedopt.torch.Muon([w], **bad)


def test_muon_refuses_state_it_cannot_keep():
    w = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.bfloat16))
    optimizer = fusedopt.torch.Muon([w], state_dtype="float32")
    w.grad = torch.ones(4, 3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="state in the param's dtype"):
        optimizer.step()
    assert torch.equal(w, torch.ones(4, 3, dtype=torch.bfloat16))


SHAPES = [(24, 8), (13, 24), (13, 13), (13, 13), (1, 16)]
KERAS_CASES = [dict(learning_rate=0.02),
               dict(learning_rate=0.01, weight_decay=0.1, momentum=0.8, nesterov=False,
                    ns_steps=3, rms_rate=None)]


def _problem(seed, steps=10, dtype=np.float32):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return params, grads


def _oracle(params, grads, hp, convention):
    hp = {**muon_algorithm.MUON.defaults(), **hp}
    out = []
    for i, p in enumerate(params):
        state, p = {}, p.astype(np.float64)
        for t, g in enumerate(grads, start=1):
            p = reference.muon(p, g[i].astype(np.float64), state, t, hp, convention)
        out.append(p)
    return out


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("case", range(len(KERAS_CASES)))
def test_keras_convention_matches_the_oracle(case, backend):
    hp = KERAS_CASES[case]
    params, grads = _problem(case)
    expected = _oracle(params, grads, hp, "keras")
    optimizer = fusedopt.Muon(backend=backend, **hp)
    for g in grads:
        optimizer.apply_gradients(list(zip(g, params)))
    tolerance = dict(VS_REFERENCE[np.float32])
    tolerance["rtol"] += 10 * 2.0**-24  # the decay factor rounded once a step
    for got, want in zip(params, expected):
        np.testing.assert_allclose(got, want, **tolerance)


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
def test_torch_convention_matches_the_bfloat16_oracle(backend):
    """Bound: torch's Newton-Schulz stores each product in bfloat16 (relative step 2^-8).
    The oracle stores the same values, but sums each product in float64 where torch sums in
    float32, so a stored value may land one bfloat16 ulp away, and that difference goes
    through the remaining products. Taking the difference of O as at most 2 ulps of its
    largest entry (2^-7 max|O|), the params after T steps differ by at most
    T * step_lr * 2^-7 * max|O|, with max|O| <= 1.5 (the iteration's fixed points lie in
    (0.7, 1.2); 1.5 leaves room for a first-step overshoot)."""
    hp = dict(learning_rate=0.01, weight_decay=0.05)
    params, grads = _problem(7)
    expected = _oracle(params, grads, hp, "torch")
    optimizer = fusedopt.Muon(backend=backend, convention="torch", **hp)
    for g in grads:
        optimizer.apply_gradients(list(zip(g, params)))
    for got, want, shape in zip(params, expected, SHAPES):
        step_lr = hp["learning_rate"] * np.sqrt(max(1.0, shape[0] / shape[1]))
        assert np.abs(got - want).max() <= len(grads) * step_lr * 2.0**-7 * 1.5


def test_float64_params_match_the_oracle():
    hp = KERAS_CASES[1]
    params, grads = _problem(3, dtype=np.float64)
    expected = _oracle(params, grads, hp, "keras")
    optimizer = fusedopt.Muon(**hp)
    for g in grads:
        optimizer.apply_gradients(list(zip(g, params)))
    for got, want in zip(params, expected):
        np.testing.assert_allclose(got, want, **VS_REFERENCE[np.float64])


def test_one_batched_transform_equals_one_matrix_at_a_time():
    """Every tensor of a shape goes through one batched product per operation; the result
    is each matrix's own (torch bfloat16: bit for bit; NumPy float32: to rounding)."""
    hp = {**muon_algorithm.MUON.defaults()}
    rng = np.random.default_rng(0)
    for shape in ((4, 24, 8), (3, 13, 13), (2, 16, 40)):
        stack = rng.standard_normal(shape).astype(np.float32)
        batched = muon_algorithm.newton_schulz(TorchOps(), torch.from_numpy(stack), hp, "torch")
        for i in range(shape[0]):
            single = torch.optim._muon._zeropower_via_newtonschulz(
                torch.from_numpy(stack[i]), muon_algorithm.COEFFICIENTS, 5, 1e-7)
            assert torch.equal(batched[i], single)
        ours = muon_algorithm.newton_schulz(ArrayOps(np), stack, hp, "keras")
        for i in range(shape[0]):
            one = reference.newton_schulz(stack[i].astype(np.float64),
                                          *muon_algorithm.COEFFICIENTS, 5, 1e-7, keras=True)
            np.testing.assert_allclose(ours[i], one, rtol=1e-4, atol=1e-5)


def test_keras_style_class_refuses_non_matrices():
    optimizer = fusedopt.Muon()
    bias = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"2-D params only.*shape \(3,\)"):
        optimizer.apply_gradients([(np.ones(3, np.float32), bias)])
    assert (bias == 1).all()


def test_a_backend_without_the_passes_is_refused_naming_why_and_the_fix():
    """The refusal is checked where the engine makes it, before any pass (CUDA has the
    passes: tests/test_cuda_muon.py)."""
    from types import SimpleNamespace

    from fusedopt.engine.orthogonal import matrix_phase
    engine = SimpleNamespace(spec=muon_algorithm.MUON)
    plan = SimpleNamespace(backend=SimpleNamespace(name="elsewhere"))
    with pytest.raises(ValueError, match=r"'cpu', 'unfused', 'cuda' backends, not 'elsewhere'"
                                         r".*Newton-Schulz.*NumPy or CuPy arrays"):
        matrix_phase(engine, plan, (0,), [], [], {})


def test_grad_scaler_unscales_in_the_momentum_pass_and_skips_inf_steps():
    """torch.amp.GradScaler hands the step its scale and inf flag; the third step's inf grad
    is skipped by both (params and momentum as they were)."""
    results = []
    for cls in (fusedopt.torch.Muon, torch.optim.Muon):
        model = net()
        opt = cls(model.parameters(), lr=0.02)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
        for step in range(6):
            opt.zero_grad()
            scaler.scale(model(data).pow(2).mean()).backward()
            if step == 2:
                next(model.parameters()).grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert relative(a, b) <= 1e-6


def test_bfloat16_numpy_params_step_as_the_same_torch_tensors():
    """A bfloat16 Muon on NumPy arrays (ml_dtypes) runs its Newton-Schulz in torch on the
    same memory: the same bits as fusedopt.torch.Muon on bfloat16 tensors."""
    import ml_dtypes
    params, grads = _problem(5, steps=4)
    arrays = [p.astype(ml_dtypes.bfloat16) for p in params]
    tensors = [torch.nn.Parameter(torch.from_numpy(p).to(torch.bfloat16)) for p in params]
    ours = fusedopt.Muon(learning_rate=0.02, weight_decay=0.1, convention="torch",
                         state_dtype="bfloat16")
    theirs = fusedopt.torch.Muon(tensors, lr=0.02)
    for g in grads:
        ours.apply_gradients([(x.astype(ml_dtypes.bfloat16), p) for x, p in zip(g, arrays)])
        for x, t in zip(g, tensors):
            t.grad = torch.from_numpy(x).to(torch.bfloat16)
        theirs.step()
    for a, t in zip(arrays, tensors):
        np.testing.assert_array_equal(a.view(np.uint16),
                                      t.detach().view(torch.int16).numpy().view(np.uint16))


def test_a_kept_workspace_gives_what_fresh_buffers_give_and_leaves_the_stack():
    """The transform's buffers are kept across steps (fusedopt/backends/matmul.py): a second
    call, and calls on larger and smaller stacks, give each matrix's own result, and the
    stack it reads is left as it was (the normalization divides a converted copy, even in
    the stack's own dtype)."""
    hp = {**muon_algorithm.MUON.defaults()}
    rng = np.random.default_rng(1)
    workspace, arrays = {}, {}
    for shape in ((3, 24, 8), (3, 24, 8), (2, 16, 40), (2, 5, 7)):
        stack = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        before = stack.clone()
        kept = muon_algorithm.newton_schulz(TorchOps(workspace), stack, hp, "torch").clone()
        for i in range(shape[0]):
            single = torch.optim._muon._zeropower_via_newtonschulz(
                stack[i], muon_algorithm.COEFFICIENTS, 5, 1e-7)
            assert torch.equal(kept[i], single)
        keras = muon_algorithm.newton_schulz(ArrayOps(np, arrays), stack.numpy(), hp, "keras")
        for i in range(shape[0]):
            one = reference.newton_schulz(stack[i].numpy().astype(np.float64),
                                          *muon_algorithm.COEFFICIENTS, 5, 1e-7, keras=True)
            np.testing.assert_allclose(keras[i], one, rtol=1e-4, atol=1e-5)
        assert torch.equal(stack, before)
