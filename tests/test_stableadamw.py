"""StableAdamW against torch-optimi's ``optimi.StableAdamW`` in a real autograd loop, and
its Keras-style class against the float64 oracle: the learning rate of each tensor is
clipped by the RMS of g^2 / v, a sum the engine's reduction phase takes per tensor
(fusedopt/engine/reductions.py)."""

import numpy as np
import optimi
import pytest
import reference
import torch
import torch_loops as loops
from cases import problem
from tolerances import VS_REFERENCE, VS_TORCH_SHADOW

import fusedopt
import fusedopt.torch
from fusedopt.algorithms.registry import REGISTRY

STEPS = 50
#: max |fusedopt - optimi| over max |optimi|, per param, after 50 steps in float32.
RELATIVE = 1e-6

#: Non-default settings: short beta_2 makes RMS(g^2 / v) > 1 on many steps, so the clip
#: acts (checked below); the third uses optimi's fully decoupled decay.
SETTINGS = [dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-4, weight_decay=0.1),
            dict(lr=3e-3, betas=(0.9, 0.5), weight_decay=0.0),
            dict(lr=1e-2, betas=(0.9, 0.7), weight_decay=0.05, decouple_lr=True, max_lr=0.02)]


def _peer(params, hp):
    # float32 params: optimi's Kahan summation is for 16-bit ones only; its foreach path.
    return optimi.StableAdamW(params, foreach=True, kahan_sum=False, triton=False, **hp)


@pytest.mark.parametrize("hp", SETTINGS, ids=["decay", "short-beta2", "decouple-lr"])
def test_matches_optimi_in_an_autograd_loop(hp):
    """Both in one loop, optimi fed fusedopt's grads (they differ by their arithmetic
    alone), then each training on its own from the same start."""
    model, twin = loops.twins()
    x, y = loops.data()
    opt = fusedopt.torch.StableAdamW(model.parameters(), **hp)
    peer = _peer(twin.parameters(), hp)
    clipped = []
    for _ in range(STEPS):
        loops.train(model, opt, 1, x, y, shadow=(twin, peer))
        clipped.append(_rms_above_one(opt, model))
    loops.assert_close(model, twin, RELATIVE)
    assert sum(clipped) > STEPS // 5  # the RMS clip changed many steps' learning rates
    for p, q in zip(model.parameters(), twin.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = opt.state[p][key], peer.state[q][key]
            assert loops.relative(a, b) <= 10 * RELATIVE, key
    alone, other = loops.twins()
    loops.train(alone, fusedopt.torch.StableAdamW(alone.parameters(), **hp), STEPS, x, y)
    loops.train(other, _peer(other.parameters(), hp), STEPS, x, y)
    loops.assert_close(alone, other, 5e-5)  # the loop's own dynamics: VS_TORCH_LOOP
    start = loops.mlp(0)
    assert loops.relative(next(model.parameters()), next(start.parameters())) > 1e-3


def _rms_above_one(opt, model) -> bool:
    """Whether some tensor's RMS(g^2 / v) exceeded 1 at the step just taken (from the
    state and grads that step used: v is the new one)."""
    eps = opt.param_groups[0]["eps"]
    for p in model.parameters():
        v = opt.state[p]["exp_avg_sq"]
        rms = (p.grad**2 / v.clamp_min(eps * eps)).mean().sqrt()
        if rms > 1:
            return True
    return False


def test_shadow_arithmetic_within_a_millionth():
    """optimi and fusedopt from one loop's grads, float32: their own rounding only."""
    hp = SETTINGS[0]
    model, twin = loops.twins()
    x, y = loops.data()
    loops.train(model, fusedopt.torch.StableAdamW(model.parameters(), **hp), STEPS, x, y,
                shadow=(twin, _peer(twin.parameters(), hp)))
    loops.assert_close(model, twin, VS_TORCH_SHADOW)


SHAPES = [(1,), (3,), (4097,), (278011,), (0,), (37, 53)]


@pytest.mark.parametrize("backend", ["cpu", "unfused", "cuda"], indirect=True)
@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_every_tensor_of_one_launch_gets_its_own_rms(backend, convention):
    """Tensors of awkward sizes in one step, grads of scales 100x apart: each tensor's lr
    is clipped by its own RMS, as the oracle computes it tensor by tensor."""
    hp = dict(learning_rate=0.02, beta_2=0.5, weight_decay=0.1, epsilon=1e-3)
    problems = [problem(shape, 6, seed=k) for k, shape in enumerate(SHAPES)]
    for k, (_, grads) in enumerate(problems):
        for t, g in enumerate(grads):
            g *= 10.0 ** (((k + t) % 3) - 1)  # a tensor's grad scale changes step to step
    params = [p.copy() for p, _ in problems]
    opt = fusedopt.StableAdamW(convention=convention, backend=backend, **hp)
    full = {**REGISTRY["stableadamw"].defaults(), **hp}
    expected = [p.astype(np.float64) for p, _ in problems]
    states = [{} for _ in problems]
    for t in range(6):
        opt.apply_gradients([(g[t], p) for (_, g), p in zip(problems, params)])
        expected = [reference.stableadamw(w, g[t], s, t + 1, full, convention)
                    for w, (_, g), s in zip(expected, problems, states)]
    for got, want in zip(params, expected):
        np.testing.assert_allclose(got, want, **VS_REFERENCE[np.float32])


def test_torch_state_and_groups_are_optimis_where_they_share_keys():
    """The moments under optimi's keys; fusedopt keeps torch.optim's per-param ``step``
    (optimi keeps one in the group, with ``eps_sq`` and ``kahan_comp`` per param)."""
    model, twin = loops.twins()
    x, y = loops.data()
    opt = fusedopt.torch.StableAdamW(model.parameters(), lr=1e-2)
    peer = _peer(twin.parameters(), dict(lr=1e-2))
    loops.train(model, opt, 3, x, y, shadow=(twin, peer))
    ours, theirs = opt.state[next(model.parameters())], peer.state[next(twin.parameters())]
    assert set(ours) == {"step", "exp_avg", "exp_avg_sq"}
    assert {"exp_avg", "exp_avg_sq"} <= set(theirs)
    assert float(ours["step"]) == 3 and int(peer.param_groups[0]["step"]) == 3
    ours_group, their_group = opt.param_groups[0], peer.param_groups[0]
    for key in ("lr", "weight_decay", "eps", "decouple_lr", "max_lr"):
        assert ours_group[key] == their_group[key], key
    assert ours_group["betas"] == (their_group["beta1"], their_group["beta2"])  # torch's key
    assert torch.equal(ours["exp_avg"].bool(), theirs["exp_avg"].bool())


KERAS_SETTINGS = [dict(learning_rate=0.01, beta_1=0.8, beta_2=0.9, epsilon=1e-4),
                  dict(learning_rate=0.005, beta_2=0.5, weight_decay=0.05, clipnorm=0.5)]


@pytest.mark.parametrize("hp", KERAS_SETTINGS, ids=["betas-eps", "decay-clip"])
def test_keras_class_fits_as_a_keras_stableadamw(hp):
    """fusedopt.keras.StableAdamW in model.fit, 50 steps, against the same class with its
    update written in keras.ops one variable at a time (tests/keras_peers.py)."""
    import keras
    import keras_peers
    from keras_fit import build_model, fit, weights

    import fusedopt.keras
    net = fit(fusedopt.keras.StableAdamW(**hp), epochs=10)
    twin = fit(keras_peers.StableAdamW(**hp), epochs=10)
    assert int(net.optimizer.iterations) == int(twin.optimizer.iterations) == STEPS
    ours, theirs = weights(net), weights(twin)
    for a, b in zip(ours, theirs):
        assert np.max(np.abs(a - b)) / np.max(np.abs(b)) <= RELATIVE
    assert [v.path.split("/")[-1] for v in net.optimizer.variables] == \
        [v.path.split("/")[-1] for v in twin.optimizer.variables]
    keras.backend.clear_session()
    start = weights(build_model(0))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(ours, start)) > 1e-3
