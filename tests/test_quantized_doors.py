"""Quantized state through fusedopt.functional and FlatParams: the same bits as the
optimizer classes."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from fusedopt import functional


@pytest.mark.parametrize("fmt", ["q8", "q4", "q8-dynamic"])
def test_functional_steps_are_the_class_steps(fmt):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(3000).astype(np.float32)
    grads = [rng.standard_normal(3000).astype(np.float32) for _ in range(4)]
    mine = p.copy()
    states = functional.quantized_state("adamw", mine, fmt, learning_rate=0.01)
    for t, g in enumerate(grads, 1):
        functional.update("adamw", [mine], [g], [states], step=t, state_dtype=fmt,
                          learning_rate=0.01)
    ref = p.copy()
    opt = fusedopt.AdamW(learning_rate=0.01, state_dtype=fmt, min_quantized_size=0)
    for g in grads:
        opt.apply_gradients([(g, ref)])
    assert np.array_equal(mine, ref)
    assert all(np.array_equal(a, b) for a, b in zip(states, opt._engine.states[0]))
    with pytest.raises(ValueError, match="state 'm' must be a uint8 array"):
        functional.update("adamw", [mine], [grads[0]], [[np.zeros(3000, np.float32)] * 2],
                          step=5, state_dtype=fmt, learning_rate=0.01)


def test_flat_params_step_a_run_as_one_param():
    """An arena's run of same-dtype params is one param (as for stochastic rounding's
    bits): its blocks run over the run's buffer, the bits of stepping that buffer."""
    rng = np.random.default_rng(1)
    arena = fusedopt.FlatParams({"w": (60, 48), "b": (2000,)})  # 64-byte multiples: no gap
    for name in ("w", "b"):
        arena.params[name][...] = rng.standard_normal(arena.params[name].shape)
    whole = np.concatenate([arena.params["w"].reshape(-1), arena.params["b"]])
    opt = fusedopt.AdamW(learning_rate=0.01, state_dtype="q8")
    ref = fusedopt.AdamW(learning_rate=0.01, state_dtype="q8")
    for _ in range(3):
        gw = rng.standard_normal((60, 48)).astype(np.float32)
        gb = rng.standard_normal(2000).astype(np.float32)
        arena.grads["w"][...], arena.grads["b"][...] = gw, gb
        arena.step(opt)
        ref.apply_gradients([(np.concatenate([gw.reshape(-1), gb]), whole)])
    got = np.concatenate([arena.params["w"].reshape(-1), arena.params["b"]])
    assert np.array_equal(got, whole)
    assert str(opt._engine.storages[0]).endswith("q8 state")
    with pytest.raises(ValueError, match="no views per param"):
        arena.state(opt)
