"""Stochastic rounding of quantized codes (``stochastic_rounding=True`` with q8/q4): each
code is the map entry just below or just above value / absmax, up with probability equal
to the distance from the lower one over the gap (so the decoded value is right on
average), reproducible from the seed; and bf16 params with q8 state train."""

from __future__ import annotations

import numpy as np
import pytest

from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.engine import Engine
from fusedopt.memory import quant


def _momentum_codes(g, fmt, seed):
    """torch SGD's momentum buffer is the grad at the first step: the codes of ``g``."""
    p = np.ones(g.size, np.float32)
    engine = Engine(REGISTRY["sgd"], "torch", backend="cpu", state_dtype=fmt,
                    stochastic_rounding=True, seed=seed, min_quantized_size=0)
    engine.add_group(dict(learning_rate=0.1, momentum=0.9))
    engine.add_params([p])
    engine.step([g.copy()])
    return quant.codes_and_scales(engine.states[0][0], g.size, fmt)


@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_codes_bracket_the_value_and_are_right_on_average(fmt):
    block = quant.FORMATS[fmt].block
    blocks = 400
    entries = quant.qmap(fmt, True).astype(np.float64)
    # every block: its absmax 1 at element 0, then one value repeated
    value = 0.3 * entries[-2] + 0.7 * entries[-3]  # 30% of the way from one entry up
    g = np.full(blocks * block, value, np.float32)
    g[::block] = 1.0
    codes, absmax = _momentum_codes(g, fmt, seed=5)
    assert np.all(absmax == 1.0)
    body = np.ones(g.size, bool)
    body[::block] = False
    got = entries[codes[body]]
    assert set(np.unique(got)) <= {entries[-3], entries[-2]}
    up = np.mean(got == entries[-2])
    n = got.size
    assert abs(up - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n), f"{up} of codes rounded up, not 0.3"
    again, _ = _momentum_codes(g, fmt, seed=5)
    other, _ = _momentum_codes(g, fmt, seed=6)
    assert np.array_equal(codes, again)
    assert not np.array_equal(codes, other)


def test_bf16_params_with_q8_state_and_stochastic_rounding_train():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)).astype(np.float32)
    w_true = rng.standard_normal((64, 80)).astype(np.float32)
    y = x @ w_true
    w = np.zeros((64, 80), ml_dtypes.bfloat16)
    engine = Engine(REGISTRY["adamw"], "torch", backend="cpu", state_dtype="q8",
                    stochastic_rounding=True, seed=3)
    engine.add_group(dict(learning_rate=0.02, weight_decay=0.0))
    engine.add_params([w])
    assert str(engine.storages[0]) == ("bfloat16 params, bfloat16 grads, q8 state, "
                                       "stochastic")

    def loss():
        return float(np.mean((x @ w.astype(np.float32) - y) ** 2))

    first = loss()
    for _ in range(300):
        grad = 2 * x.T @ (x @ w.astype(np.float32) - y) / len(x)
        engine.step([grad.astype(ml_dtypes.bfloat16)])
    assert loss() < 0.01 * first
