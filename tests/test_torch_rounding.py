"""fusedopt.torch in pure 16 bits: ``stochastic_rounding`` and ``kahan_summation`` per
param group, ``seed`` for the optimizer. The door only translates: its bits are the core
API's for the same values, seed and positions; its checkpoints carry the seed and the
compensation, so a resumed run continues bit for bit."""

import io

import ml_dtypes
import numpy as np
import pytest
import torch

import fusedopt
import fusedopt.torch as ft

BF16 = torch.bfloat16
SHAPES = [(37, 5), (5,), (1,)]
STEPS = 8

#: torch class, its arguments -> the core class and its arguments (torch convention).
PAIRS = {
    "adam": (ft.Adam, dict(lr=1e-2), fusedopt.Adam, dict(learning_rate=1e-2, epsilon=1e-8)),
    "adamw": (ft.AdamW, dict(lr=1e-2, weight_decay=0.1), fusedopt.AdamW,
              dict(learning_rate=1e-2, weight_decay=0.1, epsilon=1e-8)),
    "sgd": (ft.SGD, dict(lr=0.05, momentum=0.9), fusedopt.SGD,
            dict(learning_rate=0.05, momentum=0.9)),
}
MODES = {"stochastic": dict(stochastic_rounding=True, seed=11),
         "kahan": dict(kahan_summation=True)}


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=g) + 3).to(BF16)) for s in SHAPES]


def _grads(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randn(s, generator=g) * 0.05).to(BF16) for s in SHAPES]
            for _ in range(steps)]


def _run(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return params


def _bits(t) -> np.ndarray:
    return t.detach().contiguous().view(torch.int16).numpy().copy()


def _numpy(t) -> np.ndarray:
    return _bits(t).view(ml_dtypes.bfloat16)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PAIRS)
def test_the_torch_door_writes_the_core_apis_bits(name, mode):
    torch_cls, torch_args, core_cls, core_args = PAIRS[name]
    params, grads = _params(), _grads(STEPS)
    core_params = [_numpy(p) for p in params]
    _run(torch_cls(params, **torch_args, **MODES[mode]), params, grads)
    # The torch door keeps state in the param's dtype, as torch.optim does.
    core = core_cls(**core_args, **MODES[mode], convention="torch", backend="cpu",
                    state_dtype="bfloat16")
    for step in grads:
        core.apply_gradients(list(zip([_numpy(g) for g in step], core_params)))
    for ours, theirs in zip(params, core_params):
        np.testing.assert_array_equal(_bits(ours), theirs.view(np.int16))


@pytest.mark.parametrize("mode", MODES)
def test_the_modes_change_the_bits_and_the_seed_keys_them(mode):
    def run(**kw):
        params = _params()
        _run(ft.Adam(params, lr=1e-3, **kw), params, _grads(STEPS))
        return np.concatenate([_bits(p).ravel() for p in params])

    nearest = run()
    chosen = run(**MODES[mode])
    assert not np.array_equal(nearest, chosen)
    np.testing.assert_array_equal(chosen, run(**MODES[mode]))
    other = run(**{**MODES[mode], "seed": 12})
    if mode == "stochastic":
        assert not np.array_equal(chosen, other)
    else:  # Kahan summation is deterministic: no random bits, the seed keys nothing
        np.testing.assert_array_equal(chosen, other)


@pytest.mark.parametrize("mode", MODES)
def test_a_checkpoint_continues_bit_for_bit(mode):
    grads = _grads(2 * STEPS)
    straight = _params()
    _run(ft.AdamW(straight, lr=1e-3, **MODES[mode]), straight, grads)

    first = _params()
    opt = ft.AdamW(first, lr=1e-3, **MODES[mode])
    _run(opt, first, grads[:STEPS])
    buffer = io.BytesIO()
    torch.save({"model": [p.detach().clone() for p in first], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [torch.nn.Parameter(p) for p in saved["model"]]
    # Made with the defaults: the checkpoint's groups bring the mode and the seed back.
    again = ft.AdamW(resumed, lr=1e-3)
    again.load_state_dict(saved["opt"])
    assert again.param_groups[0]["seed"] == MODES[mode].get("seed", 0)
    if mode == "kahan":
        assert again.state[resumed[0]]["compensation"].dtype == BF16
    _run(again, resumed, grads[STEPS:])
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_groups_choose_their_rounding():
    """One group in Kahan summation, one stochastic: each param keeps its own state."""
    params = _params()
    opt = ft.Adam([{"params": params[:1], "kahan_summation": True},
                   {"params": params[1:], "stochastic_rounding": True}], lr=1e-3, seed=3)
    _run(opt, params, _grads(2))
    assert "compensation" in opt.state[params[0]]
    assert "compensation" not in opt.state[params[1]]


@pytest.mark.parametrize("groups, match", [
    (lambda p: [{"params": p, "stochastic_rounding": True, "kahan_summation": True}],
     r"param group 0: stochastic_rounding=True and kahan_summation=True: choose one"),
    (lambda p: [{"params": [torch.nn.Parameter(torch.ones(3))], "stochastic_rounding": True}],
     r"param group 0, param 0 .*float32.*stochastic_rounding"),
    (lambda p: [{"params": p[:1], "seed": 1}, {"params": p[1:], "seed": 2}],
     r"param group 1: seed=2, but the other groups have seed=1"),
    (lambda p: [{"params": p, "seed": -1}], r"param group 0: seed must be an int in"),
    (lambda p: [{"params": p, "kahan_summation": "yes"}],
     r"param group 0: kahan_summation must be True or False"),
])
def test_bad_rounding_arguments_are_refused(groups, match):
    params = _params()
    before = [p.detach().clone() for p in params]
    with pytest.raises((ValueError, TypeError), match=match):
        opt = ft.Adam(groups(params), lr=1e-3)
        _run(opt, params, _grads(1))
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


def test_a_seed_change_in_one_group_is_refused_and_changes_nothing():
    params = _params()
    opt = ft.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=1e-3,
                  stochastic_rounding=True, seed=5)
    _run(opt, params, _grads(1))
    before = [p.detach().clone() for p in params]
    opt.param_groups[1]["seed"] = 6
    for p, g in zip(params, _grads(1, seed=9)[0]):
        p.grad = g
    with pytest.raises(ValueError, match=r"param group 1: seed=6, but the other groups have "
                                         r"seed=5"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
