"""Adan against torch-optimi 0.3.3's ``optimi.Adan`` on the CPU: 50 steps of a real autograd
loop in non-default settings (weight decay, fully decoupled weight decay), params within
1e-6 of the model's scale and the four state tensors, under optimi's own keys, within 1e-5
(fusedopt/algorithms/adan.py is the whole optimizer).

Params are compared relative to the model's largest param, as tests/test_ademamix.py does:
the one-element output bias ends near zero, where ulp-level differences of the two
implementations' roundings (optimi's foreach ``lerp``, ``addcmul`` and ``addcdiv`` against
the fused rule's) are large next to that bias alone.

optimi's class reads ``adam_wd`` into its param groups but does not pass it to its step
(0.3.3's ``Adan.step`` calls its functional ``adan`` without it), so ``optimi.Adan(...,
adam_wd=True)`` steps exactly as ``adam_wd=False`` (checked below). fusedopt does what
optimi's docstring and its functional ``adan`` say, decaying before the update; that form
is held to the functional ``adan`` called with ``adam_wd=True``.
"""

import sys

import optimi
import pytest
import torch
from peer_loop import STEPS, relative, train

import fusedopt
import fusedopt.torch

#: optimi's functional step (the package's ``optimi.adan`` is that function, not its module).
adan_step = sys.modules["optimi.adan"].adan

KEYS = ("exp_avg", "exp_avg_diff", "exp_avg_sq", "prev_grad")

SETTINGS = [dict(lr=1e-2, betas=(0.9, 0.85, 0.995), eps=1e-7, weight_decay=0.05),
            dict(lr=3e-3, betas=(0.95, 0.9, 0.999), weight_decay=0.0),
            dict(lr=1e-2, weight_decay=0.01, decouple_lr=True, max_lr=0.02)]


def _optimi(params, **hp):
    # float32 params: optimi's Kahan summation is for 16-bit ones only; its foreach path.
    return optimi.Adan(params, foreach=True, triton=False, kahan_sum=False, **hp)


class _FunctionalAdan(optimi.Adan):
    """optimi.Adan stepped through optimi's functional ``adan`` with the group's
    ``adam_wd``, which the class itself leaves out."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lists = [[] for _ in range(7)]
            self._init_group(group, *lists)
            adan_step(*lists, lr=group["lr"], beta1=group["beta1"],
                             beta2=group["beta2"], beta3=group["beta3"], eps=group["eps"],
                             weight_decay=group["weight_decay"], step=group["step"],
                             decouple_lr=group["decouple_lr"], max_lr=group["max_lr"],
                             adam_wd=group["adam_wd"], foreach=True, triton=False)


def _model_relative(ours, theirs) -> float:
    """The largest difference over all tensors relative to the largest magnitude."""
    scale = max(float(b.abs().max()) for b in theirs)
    return max(float((a - b).abs().max()) for a, b in zip(ours, theirs)) / scale


def _assert_same_run(ours, theirs, optimizer, peer):
    assert _model_relative(ours, theirs) <= 1e-6
    pairs = list(zip(optimizer.param_groups[0]["params"], peer.param_groups[0]["params"]))
    for key in KEYS:
        # 1e-5 of the model's largest value of each, as for RAdam's and AdEMAMix's moments:
        # EMAs of grads that cancel as the loss flattens (exp_avg_diff averages differences
        # of successive grads; the output bias's is 2e-4 where the weights' reach 0.1).
        assert _model_relative([optimizer.state[p][key] for p, _ in pairs],
                               [peer.state[q][key] for _, q in pairs]) <= 1e-5, key
    for p, _ in pairs:
        assert float(optimizer.state[p]["step"]) == int(peer.param_groups[0]["step"]) == STEPS


@pytest.mark.parametrize("hp", SETTINGS, ids=["decay", "no-decay", "decouple-lr"])
def test_adan_matches_optimi_in_a_training_loop(hp):
    ours, optimizer = train(lambda ps: fusedopt.torch.Adan(ps, **hp))
    theirs, peer = train(lambda ps: _optimi(ps, **hp))
    _assert_same_run(ours, theirs, optimizer, peer)
    start, _ = train(lambda ps: _optimi(ps, **hp), steps=0)
    assert max(relative(a, b) for a, b in zip(theirs, start)) > 1e-2  # it trained


def test_adam_style_decay_matches_optimis_functional_adan():
    hp = dict(lr=1e-2, betas=(0.9, 0.85, 0.995), weight_decay=0.1, adam_wd=True)
    ours, optimizer = train(lambda ps: fusedopt.torch.Adan(ps, **hp))
    theirs, peer = train(lambda ps: _FunctionalAdan(ps, foreach=True, triton=False, **hp))
    _assert_same_run(ours, theirs, optimizer, peer)
    proximal, _ = train(lambda ps: fusedopt.torch.Adan(ps, **{**hp, "adam_wd": False}))
    assert max(relative(a, b) for a, b in zip(ours, proximal)) > 1e-5  # a different decay


def test_optimis_class_ignores_adam_wd():
    """The fact the module docstring states, so that a later optimi that honours it shows
    up here."""
    hp = dict(lr=1e-2, weight_decay=0.1)
    with_flag, _ = train(lambda ps: _optimi(ps, adam_wd=True, **hp), steps=5)
    without, _ = train(lambda ps: _optimi(ps, **hp), steps=5)
    assert all(torch.equal(a, b) for a, b in zip(with_flag, without))


def test_first_step_is_a_sign_step_and_the_state_is_optimis():
    """Step 1: d = 0, m = g, n = g^2, so w -= lr g / (|g| + eps); prev_grad holds -g."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, -3.0]))
    w.grad = torch.tensor([2.0, -0.5, 0.0])
    opt = fusedopt.torch.Adan([w], lr=0.1, weight_decay=0.0, eps=1e-6)
    opt.step()
    expected = torch.tensor([1.0, 2.0, -3.0]) - 0.1 * w.grad / (w.grad.abs() + 1e-6)
    assert torch.allclose(w.detach(), expected, rtol=1e-6, atol=0)
    state = opt.state[w]
    assert list(state) == ["step", *KEYS]
    assert torch.equal(state["prev_grad"], -w.grad)
    assert torch.equal(state["exp_avg_diff"], torch.zeros(3))


def test_defaults_and_names_are_optimis():
    params = [torch.nn.Parameter(torch.zeros(2))]
    group = fusedopt.torch.Adan(params).param_groups[0]
    assert group["betas"] == (0.98, 0.92, 0.99)
    assert (group["weight_decay"], group["eps"]) == (2e-2, 1e-6)
    assert (group["decouple_lr"], group["max_lr"], group["adam_wd"]) == (False, None, False)
    peer = optimi.Adan(params, lr=1e-3).param_groups[0]
    assert (peer["beta1"], peer["beta2"], peer["beta3"]) == group["betas"]
    assert (peer["weight_decay"], peer["eps"]) == (group["weight_decay"], group["eps"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(betas=(0.9, 0.9)), r"betas must be a tuple of 3"),
    (dict(betas=(0.9, 0.9, 1.0)), r"betas"),
    (dict(eps=-1.0), r"eps"),
    (dict(adam_wd="yes"), r"adam_wd must be True or False"),
    (dict(max_lr=-1.0), r"max_lr"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=message):
        fusedopt.torch.Adan(params, **kwargs)


def test_keras_style_class_refuses_optimis_own_arguments():
    with pytest.raises(ValueError, match="decouple_lr exists only in the torch convention"):
        fusedopt.Adan(decouple_lr=True)
    with pytest.raises(ValueError, match="beta_3 must be in"):
        fusedopt.Adan(beta_3=1.5)


# --- checkpoints: optimi's per-param tensors are fusedopt's, the groups differ -----------------
# optimi keeps one int32 ``step`` per param group (with ``setup``, ``beta1``..``beta3``,
# ``kahan_sum``, ``triton``, ``gradient_release``) and ``kahan_comp`` (None in float32) per
# param; fusedopt.torch keeps torch.optim's layout, ``betas`` and a float32 ``step`` per
# param. torch's load_state_dict takes the saved groups as they are, so neither loads the
# other's state_dict directly; the per-param tensors carry the same values under the same
# keys, so a translation of the groups and of where ``step`` lives is all a run needs to
# move across, as the two translations below show.

_OPTIMI_ONLY = ("beta1", "beta2", "beta3", "step", "setup", "kahan_sum", "triton",
                "gradient_release")


def _from_optimi(saved):
    groups, state = [], {}
    for group in saved["param_groups"]:
        mine = {k: v for k, v in group.items() if k not in _OPTIMI_ONLY}
        groups.append(dict(mine, betas=(group["beta1"], group["beta2"], group["beta3"])))
        for i in group["params"]:
            if i in saved["state"]:
                state[i] = {"step": torch.tensor(float(group["step"])),
                            **{k: saved["state"][i][k] for k in KEYS}}
    return {"state": state, "param_groups": groups}


def _to_optimi(saved):
    groups, state = [], {}
    for group in saved["param_groups"]:
        steps = {float(saved["state"][i]["step"]) for i in group["params"]}
        assert len(steps) == 1  # optimi's step is the group's: one count for all
        b1, b2, b3 = group["betas"]
        groups.append(dict(lr=group["lr"], beta1=b1, beta2=b2, beta3=b3, eps=group["eps"],
                           weight_decay=group["weight_decay"], decouple_lr=group["decouple_lr"],
                           max_lr=group["max_lr"], adam_wd=group["adam_wd"], kahan_sum=False,
                           foreach=True, triton=False, gradient_release=False, setup=True,
                           step=torch.tensor(int(steps.pop()), dtype=torch.int32),
                           params=group["params"]))
        for i in group["params"]:
            state[i] = {**{k: saved["state"][i][k] for k in KEYS}, "kahan_comp": None}
    return {"state": state, "param_groups": groups}


def _loaded(optimizer, state_dict):
    optimizer.load_state_dict(state_dict)
    return optimizer


@pytest.mark.parametrize("first", ["fusedopt", "optimi"])
def test_a_run_moves_between_optimi_and_fusedopt_through_their_state_dicts(first):
    """20 steps with one, its state_dict translated and loaded into the other, 30 more:
    the run ends where each optimizer's own 50 steps end (within the 1e-6 of the loops
    above), and the tensors load bit for bit."""
    from peer_loop import model
    hp = SETTINGS[0]
    make = {"fusedopt": lambda ps: fusedopt.torch.Adan(ps, **hp),
            "optimi": lambda ps: _optimi(ps, **hp)}
    translate = {"fusedopt": _to_optimi, "optimi": _from_optimi}
    second = "optimi" if first == "fusedopt" else "fusedopt"
    net = model()
    _, before = train(make[first], steps=20, net=net)
    moved = translate[first](before.state_dict())
    resumed = _loaded(make[second](net.parameters()), moved)
    for p in net.parameters():
        for key in KEYS:
            assert torch.equal(resumed.state[p][key], before.state[p][key]), key
    step = resumed.param_groups[0]["step"] if second == "optimi" else \
        resumed.state[next(net.parameters())]["step"]
    assert int(step) == 20
    ended, after = train(lambda ps: resumed, steps=STEPS - 20, net=net)
    for name in (first, second):
        alone, _ = train(make[name])
        assert _model_relative(ended, alone) <= 1e-6, name
    if second == "fusedopt":
        assert float(after.state[next(net.parameters())]["step"]) == STEPS
    else:
        assert int(after.param_groups[0]["step"]) == STEPS
