"""Params in any dense layout, and complex params, stepped in place as torch.optim steps them
(fusedopt/torch/_layout.py): channels_last and transposed params, grads in another order,
complex params as real pairs; state with the param's strides; checkpoints both ways."""

import copy

import pytest
import torch
import torch_loops as loops
from tolerances import VS_TORCH_LOOP, VS_TORCH_SHADOW

import fusedopt.torch as ft

CHANNELS_LAST = torch.channels_last


def _conv_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.Tanh(), torch.nn.Conv2d(8, 4, 3), torch.nn.Tanh(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5)).to(memory_format=CHANNELS_LAST)


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, 8, 8, generator=g).to(memory_format=CHANNELS_LAST)
    return x, torch.randint(0, 5, (32,), generator=g)


def test_a_channels_last_conv_net_matches_torchs_adamw_over_50_steps():
    """fusedopt's model trains; torch's AdamW steps a twin with the same grads (the shadow:
    the optimizers' arithmetic alone). The conv weights are channels_last, strides
    (27, 1, 9, 3) and (72, 1, 24, 8), and stay so, as do their state tensors."""
    model, twin = _conv_net(), _conv_net()
    conv = model[0].weight
    assert conv.stride() == (27, 1, 9, 3) and not conv.is_contiguous()
    ours = ft.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = _images()
    losses = loops.train(model, ours, 50, x, y, shadow=(twin, theirs))
    assert losses[-1] < 0.5 * losses[0]
    loops.assert_close(model, twin, VS_TORCH_SHADOW)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.stride() == q.stride()
        for key in ("exp_avg", "exp_avg_sq"):
            assert ours.state[p][key].stride() == theirs.state[q][key].stride() == p.stride()
            assert loops.relative(ours.state[p][key], theirs.state[q][key]) <= VS_TORCH_SHADOW
    assert ours.state[conv]["exp_avg"].stride() == (27, 1, 9, 3)


def test_the_state_of_a_strided_param_is_its_memory_in_the_params_order():
    """The exposed state is the engine's own memory under the param's strides: writing it
    changes the next step, as writing torch.optim's state does."""
    w = torch.nn.Parameter(torch.randn(5, 4).t())  # strides (1, 4)
    twin = torch.nn.Parameter(w.detach().clone(memory_format=torch.preserve_format))
    ours, theirs = ft.SGD([w], lr=0.1, momentum=0.9), torch.optim.SGD([twin], lr=0.1,
                                                                        momentum=0.9)
    for step in range(3):
        g = torch.randn(5, 4).t()
        w.grad, twin.grad = g.clone(memory_format=torch.preserve_format), g.clone(
            memory_format=torch.preserve_format)
        ours.step(), theirs.step()
        if step == 0:
            for opt, p in ((ours, w), (theirs, twin)):
                opt.state[p]["momentum_buffer"][0, 1] = 5.0
    assert ours.state[w]["momentum_buffer"].stride() == (1, 4)
    torch.testing.assert_close(w, twin, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grad_layout", ["contiguous", "transposed twice"])
def test_a_grad_in_another_order_than_its_param_is_copied_not_refused(grad_layout):
    """A channels_last param with a contiguous grad (or a grad with other strides still):
    the grad is read through a copy in the param's order; the state keeps the param's."""
    w = torch.nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=CHANNELS_LAST))
    twin = torch.nn.Parameter(w.detach().clone(memory_format=torch.preserve_format))
    ours, theirs = ft.Adam([w], lr=0.1), torch.optim.Adam([twin], lr=0.1)
    for _ in range(4):
        g = torch.randn(4, 3, 2, 2)
        if grad_layout != "contiguous":
            g = g.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
        w.grad, twin.grad = g.clone(), g.clone()
        ours.step(), theirs.step()
    assert w.stride() == (12, 1, 6, 3) and ours.state[w]["exp_avg"].stride() == w.stride()
    torch.testing.assert_close(w, twin, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.state[w]["exp_avg_sq"], theirs.state[twin]["exp_avg_sq"],
                               rtol=1e-6, atol=1e-9)


COMPLEX = {"adam": dict(lr=1e-2, amsgrad=True, weight_decay=1e-2),
           "adamw": dict(lr=1e-2, weight_decay=0.1),
           "sgd": dict(lr=1e-3, momentum=0.9, nesterov=True),
           "rmsprop": dict(lr=1e-3, momentum=0.5, centered=True),
           "adagrad": dict(lr=0.05, initial_accumulator_value=0.1),
           "adadelta": dict(lr=0.5, weight_decay=1e-3),
           "adamax": dict(lr=1e-2),
           "nadam": dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=0.1)}


def _complex_problem(dtype):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(16, 6, generator=g, dtype=dtype)
    b = torch.randn(16, 2, generator=g, dtype=dtype)
    start = torch.randn(6, 2, generator=g, dtype=dtype)
    # One param contiguous, one transposed: complex and strided at once.
    return a, b, start, torch.randn(2, 6, generator=g, dtype=dtype).t()


@pytest.mark.parametrize("name", sorted(COMPLEX))
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_params_match_torch_over_50_steps(name, dtype):
    """A complex least-squares fit, |a (w + v) - b|^2, stepped by fusedopt and, with the same
    grads, by torch.optim: torch steps complex params as real pairs (view_as_real of the
    param, grad and state; Adam's second moment per real component), and so does fusedopt.
    Params and state within 1e-6 relative (1e-12 for complex128) after 50 steps."""
    a, b, start, other = _complex_problem(dtype)
    ours_p = [torch.nn.Parameter(start.clone()), torch.nn.Parameter(other.clone().t().t())]
    their_p = [torch.nn.Parameter(start.clone()), torch.nn.Parameter(other.clone().t().t())]
    assert ours_p[1].stride() == (1, 6)
    ours = ft.CLASSES[name](ours_p, **COMPLEX[name])
    theirs = loops.peer_class(name)(their_p, **COMPLEX[name])
    losses = []
    for _ in range(50):
        loss = (a @ (ours_p[0] + ours_p[1]) - b).abs().pow(2).sum()
        ours.zero_grad(), theirs.zero_grad()
        loss.backward()
        for p, q in zip(ours_p, their_p):
            q.grad = p.grad.clone(memory_format=torch.preserve_format)
        ours.step(), theirs.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    rtol = VS_TORCH_SHADOW if dtype == torch.complex64 else 1e-12
    for p, q in zip(ours_p, their_p):
        assert loops.relative(torch.view_as_real(p), torch.view_as_real(q)) <= rtol
        assert ours.state[p].keys() == theirs.state[q].keys()
        for key, value in theirs.state[q].items():
            mine = ours.state[p][key]
            assert mine.dtype == value.dtype and mine.stride() == value.stride(), key
            if value.is_complex():
                mine, value = torch.view_as_real(mine), torch.view_as_real(value)
            assert loops.relative(mine.double(), value.double()) <= rtol, key


def test_complex_and_channels_last_checkpoints_load_both_ways():
    """torch.optim's checkpoint of a complex and a channels_last param loads into fusedopt
    (moments copied into the params' order), fusedopt's into torch.optim, and both go on as
    one run."""
    def params():
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=CHANNELS_LAST)),
                torch.nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))]

    def run(opt, ps, steps, g):
        for _ in range(steps):
            for p in ps:
                p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g,
                                                               dtype=p.dtype))
            opt.step()

    base = params()
    reference = torch.optim.Adam(base, lr=0.05)
    run(reference, base, 6, torch.Generator().manual_seed(1))

    for first, second in ((torch.optim.Adam, ft.Adam), (ft.Adam, torch.optim.Adam)):
        ps = params()
        opt = first(ps, lr=0.05)
        g = torch.Generator().manual_seed(1)
        run(opt, ps, 3, g)
        saved = copy.deepcopy(opt.state_dict())
        resumed = second(ps, lr=0.05)
        resumed.load_state_dict(saved)
        assert resumed.state[ps[0]]["exp_avg"].stride() == ps[0].stride()
        assert resumed.state[ps[1]]["exp_avg_sq"].dtype == torch.complex64
        run(resumed, ps, 3, g)
        for p, q in zip(ps, base):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_strided_param_whose_data_is_replaced_in_another_order_goes_on():
    """``.data`` replaced by a contiguous copy of a channels_last weight: the state follows
    into the new order (torch.optim keeps it as it was; the values are the same)."""
    ours_p = torch.nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=CHANNELS_LAST))
    their_p = torch.nn.Parameter(ours_p.detach().clone(memory_format=torch.preserve_format))
    ours, theirs = ft.RMSprop([ours_p], lr=1e-2, momentum=0.5), torch.optim.RMSprop(
        [their_p], lr=1e-2, momentum=0.5)
    g = torch.Generator().manual_seed(2)
    for step in range(6):
        if step == 3:
            ours_p.data = ours_p.data.contiguous()
            their_p.data = their_p.data.contiguous()
        grad = torch.randn(4, 3, 2, 2, generator=g)
        ours_p.grad, their_p.grad = grad.clone(), grad.clone()
        ours.step(), theirs.step()
    assert ours._rebuilds == 1 and ours.state[ours_p]["square_avg"].is_contiguous()
    torch.testing.assert_close(ours_p, their_p, rtol=1e-6, atol=1e-7)


def test_a_float64_conv_net_in_channels_last_trains_as_torchs_does():
    """No shadow: the two models train apart, each from its own grads, 20 steps."""
    model, twin = (_conv_net().double() for _ in range(2))
    x, y = _images()
    x = x.double()
    for m, opt in ((model, ft.NAdam(model.parameters(), lr=1e-2)),
                   (twin, torch.optim.NAdam(twin.parameters(), lr=1e-2))):
        loops.train(m, opt, 20, x, y)
    loops.assert_close(model, twin, VS_TORCH_LOOP["float64"])
