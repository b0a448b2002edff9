"""``use_ema`` inside the CPU step's own pass (fusedopt/engine/ema.py): the same bits as the
separate pass for float32 and float64, one rounding for 16-bit averages, no change to the
step itself, and the pass kept for what the fused step does not cover."""

import ml_dtypes
import numpy as np
import pytest

import fusedopt
from fusedopt.engine import ema as _ema

BF16 = ml_dtypes.bfloat16
SHAPES = [(3, 40), (77,), (1,)]  # odd sizes: vector bodies and their scalar tails
MOMENTUM = 0.9


def _run(cls, dtype, steps=6, skip_pass=False, monkeypatch=None, **kwargs):
    """(params, averages) after ``steps`` steps from one seed; ``skip_pass`` makes the
    separate pass a no-op, so only averages the step itself updated move."""
    if skip_pass:
        monkeypatch.setattr(_ema.MovingAverage, "update",
                            lambda self, params, averages, iterations, done=(): None)
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    opt = cls(**kwargs)
    history = []
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        opt.apply_gradients(zip(grads, params))
        if opt.use_ema:
            history.append([opt.moving_average(p).copy() for p in params])
        else:
            history.append([p.copy() for p in params])
    return params, history


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,kwargs", [(fusedopt.Adam, {}),
                                        (fusedopt.SGD, dict(momentum=0.9, nesterov=True))],
                         ids=["adam", "sgd-nesterov"])
def test_fused_average_has_the_bits_of_the_separate_pass(cls, kwargs, dtype, monkeypatch):
    kwargs = dict(kwargs, learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM)
    params, fused = _run(cls, dtype, backend="cpu", **kwargs)
    ref_params, separate = _run(cls, dtype, backend="unfused", **kwargs)
    for step, (ours, theirs) in enumerate(zip(fused, separate)):
        for i, (a, b) in enumerate(zip(ours, theirs)):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step + 1}, average {i}")
    for p, q in zip(params, ref_params):
        np.testing.assert_array_equal(p, q)
    # With the separate pass made a no-op the CPU averages still move: the step did it.
    _, alone = _run(cls, dtype, skip_pass=True, monkeypatch=monkeypatch, backend="cpu",
                    **kwargs)
    for a, b in zip(alone[-1], fused[-1]):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    _, nothing = _run(cls, dtype, skip_pass=True, monkeypatch=monkeypatch,
                      backend="unfused", **kwargs)
    assert all(not a.any() for a in nothing[-1])  # where the pass is the only update


def _bf16_average_reference(param_history, momentum):
    """Each step's average from the stored params: float32 math in Keras' order, rounded
    once to bfloat16 (to nearest even); the first step takes the weights."""
    m = np.float32(BF16(momentum))
    one_minus_m = np.float32(BF16(np.float32(1) - m))  # Keras' 1 - m, in the variable's type
    averages, out = None, []
    for params in param_history:
        if averages is None:
            averages = [p.copy() for p in params]
        else:
            averages = [(m * a.astype(np.float32) + one_minus_m * p.astype(np.float32))
                        .astype(BF16) for a, p in zip(averages, params)]
        out.append(averages)
    return out


@pytest.mark.parametrize("mode", [dict(), dict(master_weights=True),
                                  dict(stochastic_rounding=True, seed=5)],
                         ids=["plain", "master", "stochastic"])
def test_bf16_average_rounds_once_and_leaves_the_step_alone(mode):
    kwargs = dict(mode, learning_rate=0.05)
    # The params' bits without use_ema, step by step: the average must not change them.
    _, plain = _run(fusedopt.Adam, BF16, **kwargs)
    params, averages = _run(fusedopt.Adam, BF16, use_ema=True, ema_momentum=MOMENTUM,
                            **kwargs)
    for p, q in zip(params, plain[-1]):
        np.testing.assert_array_equal(p.view(np.uint16), q.view(np.uint16))
    for step, (ours, ref) in enumerate(zip(averages, _bf16_average_reference(plain,
                                                                              MOMENTUM))):
        for i, (a, b) in enumerate(zip(ours, ref)):
            np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16),
                                          err_msg=f"step {step + 1}, average {i}")
    assert any((a != p).any() for a, p in zip(averages[-1], params))  # it lags the weights


def test_params_left_out_of_a_step_still_average_as_keras():
    """Keras moves every variable's average after each step, stepped or not: the fused
    step covers the stepped params, the separate pass the others."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = fusedopt.Adam(use_ema=True, ema_momentum=MOMENTUM)
    opt.apply_gradients(zip([rng.standard_normal(s).astype(np.float32) for s in SHAPES],
                            params))
    before = [opt.moving_average(p).copy() for p in params]
    opt.apply_gradients([(rng.standard_normal(SHAPES[0]).astype(np.float32), params[0])])
    m = np.float32(MOMENTUM)
    one_minus_m = np.float32(1) - m
    for p, a in zip(params, before):
        np.testing.assert_array_equal(opt.moving_average(p), a * m + p * one_minus_m)
    assert not np.array_equal(opt.moving_average(params[1]), before[1])
