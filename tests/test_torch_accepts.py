"""What torch.optim accepts, fusedopt.torch accepts alike: a tensor lr of any 1-element
shape, tensor betas, params created on the meta device and materialized before the first
step, a param listed twice, load_state_dict hooks that keep their own entries in ``state``,
and an Adam checkpoint loaded into AdamW. Each is compared with torch.optim doing the same."""

import contextlib
import copy
import warnings

import pytest
import torch

import fusedopt.torch as ft

#: float32, a few steps of the same arithmetic in another order: a few ulps.
TOL = dict(rtol=1e-5, atol=1e-6)


def _pair(seed=0, shape=(4, 3)):
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(shape))
    return w, torch.nn.Parameter(w.detach().clone())


def _steps(pairs, n=4, seed=1, between=None):
    """``n`` steps of (optimizer, params) pairs with the same random grads each step."""
    g = torch.Generator().manual_seed(seed)
    for t in range(n):
        grads = [torch.randn(p.shape, generator=g) for p in pairs[0][1]]
        for opt, params in pairs:
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            opt.step()
        if between is not None:
            between(t)


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad", "RMSprop", "NAdam"])
def test_a_tensor_lr_of_any_one_element_shape_steps_as_torchs(name, shape):
    """A scheduler may fill the tensor in place: the next step reads the new value."""
    a, b = _pair()
    lrs = [torch.full(shape, 0.01), torch.full(shape, 0.01)]
    ours, theirs = getattr(ft, name)([a], lr=lrs[0]), getattr(torch.optim, name)([b],
                                                                               lr=lrs[1])
    _steps([(ours, [a]), (theirs, [b])],
           between=lambda t: [lr.fill_(0.003) for lr in lrs] if t == 1 else None)
    torch.testing.assert_close(a, b, **TOL)
    assert ours.param_groups[0]["lr"] is lrs[0]


def test_a_tensor_lr_of_several_elements_is_refused_as_torch_refuses_it():
    for cls in (torch.optim.Adam, ft.Adam):
        with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
            cls([torch.nn.Parameter(torch.ones(2))], lr=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_betas_are_kept_and_stepped_as_torch_does(name):
    a, b = _pair()
    betas = lambda: (torch.tensor([[0.8]]), torch.tensor([0.95]))  # noqa: E731
    ours = getattr(ft, name)([a], lr=torch.tensor(0.01), betas=betas())
    theirs = getattr(torch.optim, name)([b], lr=torch.tensor(0.01), betas=betas())
    _steps([(ours, [a]), (theirs, [b])])
    torch.testing.assert_close(a, b, **TOL)
    mine, torchs = ours.param_groups[0]["betas"], theirs.param_groups[0]["betas"]
    assert [x.shape for x in mine] == [x.shape for x in torchs] == [(), ()]


@contextlib.contextmanager
def _swapping():
    """Module.to_empty keeps each Parameter object (torch.utils.swap_tensors) only when
    asked to: else it makes new ones, and an optimizer built on meta keeps stale params,
    with torch.optim as with fusedopt."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


def _on_meta_then_materialized(cls, build_before: bool):
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(),
                                    torch.nn.Linear(4, 2))
    opt = cls(model.parameters(), lr=0.05) if build_before else None
    with _swapping():
        model.to_empty(device="cpu")
    torch.manual_seed(0)
    for layer in (model[0], model[2]):
        layer.reset_parameters()
    opt = opt or cls(model.parameters(), lr=0.05)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(2))
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_params_made_on_meta_are_stepped_once_materialized(name):
    """Built on meta params, stepped after ``to_empty`` and initialization, as torch.optim
    does it (torch's Adagrad makes its state at construction, on meta, and then cannot step:
    fusedopt's waits for the first step, so it is compared with torch's built after)."""
    ours = _on_meta_then_materialized(getattr(ft, name), True)
    theirs = _on_meta_then_materialized(getattr(torch.optim, name), name != "Adagrad")
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert p.device.type == "cpu"
        torch.testing.assert_close(p, q, **TOL)


@pytest.mark.parametrize("name, hp", [("Adam", {}), ("SGD", dict(weight_decay=0.1)),
                                      ("Adagrad", {}), ("RMSprop", dict(centered=True))])
def test_a_param_listed_twice_warns_and_is_stepped_twice_as_torch_does(name, hp):
    """torch warns (a group with duplicate params will be an error some day) and updates
    the param once per listing, each update reading the state the previous one left. (Not
    quite so for torch.optim.SGD with momentum at a param's first step, where each listing
    starts a buffer of its own from the grad and the last one is kept: fusedopt's second
    update reads the first one's buffer, as at every later step.)"""
    (a, b), (c, d) = _pair(0), _pair(1, (3,))
    made = []
    for cls, w, bias in ((getattr(ft, name), a, c), (getattr(torch.optim, name), b, d)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made.append(cls([w, bias, w], lr=0.1, **hp))
        assert any("duplicate parameters" in str(x.message) for x in caught)
    _steps([(made[0], [a, c]), (made[1], [b, d])])
    torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(c, d, **TOL)
    for key, value in made[1].state[b].items():
        torch.testing.assert_close(made[0].state[a][key], value, **TOL)


def test_load_state_dict_hooks_may_keep_their_own_entries_in_state():
    """torch's own tests register hooks that store booleans under string keys of ``state``;
    loading goes on, and the entries stay, as with torch.optim."""
    results = []
    for cls in (torch.optim.Adam, ft.Adam):
        w, _ = _pair()
        opt = cls([w], lr=0.1)
        _steps([(opt, [w])], n=2)
        saved = copy.deepcopy(opt.state_dict())

        def pre(optimizer, state_dict):
            state_dict["state"]["ran_pre"] = True

        def post(optimizer):
            optimizer.state["ran_post"] = True

        fresh = cls([w], lr=0.1)
        fresh.register_load_state_dict_pre_hook(pre)
        fresh.register_load_state_dict_post_hook(post)
        fresh.load_state_dict(saved)
        assert fresh.state["ran_pre"] is True and fresh.state["ran_post"] is True
        _steps([(fresh, [w])], n=2, seed=3)
        assert fresh.state_dict()["state"]["ran_post"] is True
        results.append(w.detach().clone())
    torch.testing.assert_close(results[1], results[0], **TOL)


def test_adamw_loaded_from_an_adam_checkpoint_decays_decoupled_as_torchs_does():
    a, b = _pair()
    adam = torch.optim.Adam([a], lr=0.05, weight_decay=0.5)
    _steps([(adam, [a])], n=2)
    b.data.copy_(a.data)
    saved = adam.state_dict()
    assert saved["param_groups"][0]["decoupled_weight_decay"] is False
    ours, theirs = ft.AdamW([a]), torch.optim.AdamW([b])
    ours.load_state_dict(copy.deepcopy(saved))
    theirs.load_state_dict(copy.deepcopy(saved))
    assert ours.param_groups[0]["decoupled_weight_decay"] is True
    assert theirs.param_groups[0]["decoupled_weight_decay"] is True
    _steps([(ours, [a]), (theirs, [b])], seed=5)
    torch.testing.assert_close(a, b, **TOL)
