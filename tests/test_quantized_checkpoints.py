"""Quantized state saved and loaded: ``state_dict`` and the safetensors checkpoint keep the
codes, the scales and the map's name; a resumed run continues bit for bit; a checkpoint that
does not fit is refused and nothing changes; front doors take ``state_dtype="q8"``/``"q4"``."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from fusedopt import checkpoint
from fusedopt.memory import quant

SHAPES = ((5000,), (70, 80), (10,))


def _problem(seed=0, steps=6):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(steps)]
    return params, grads


def _run(opt, params, grads):
    for g in grads:
        opt.apply_gradients(list(zip([x.copy() for x in g], params)))


#: The map each state_dtype keeps.
MAPS = {"q8": "power", "q4": "dynamic", "q8-dynamic": "dynamic"}


@pytest.mark.parametrize("fmt", sorted(MAPS))
def test_a_resumed_run_continues_bit_for_bit(fmt, tmp_path):
    params, grads = _problem()
    straight = [p.copy() for p in params]
    opt = fusedopt.AdamW(learning_rate=0.01, state_dtype=fmt)
    _run(opt, straight, grads)
    assert [str(s) for s in opt._engine.storages] == [
        f"float32 params, float32 grads, {fmt} state"] * 2 + [
        "float32 params, float32 grads, float32 state"]  # below min_quantized_size

    first = [p.copy() for p in params]
    opt1 = fusedopt.AdamW(learning_rate=0.01, state_dtype=fmt)
    _run(opt1, first, grads[:3])
    path = tmp_path / "opt.safetensors"
    opt1.save(path)
    meta, arrays = checkpoint.read(path)
    slot = meta["params"][0]["slots"][0]
    assert slot == {"name": "m", "dtype": fmt, "map": MAPS[fmt],
                    "block": quant.FORMATS[fmt].block}
    assert arrays["state/0/m/codes"].dtype == np.uint8
    assert arrays["state/0/m/absmax"].shape == (quant.FORMATS[fmt].blocks(5000),)
    assert "state/2/m" in arrays  # the small param's float32 state
    resumed = [p.copy() for p in first]
    opt2 = fusedopt.load(path, resumed)
    _run(opt2, resumed, grads[3:])
    assert all(np.array_equal(a, b) for a, b in zip(resumed, straight))
    assert all(np.array_equal(a, b) for a, b in
               zip(opt2._engine.states[0], opt._engine.states[0]))

    state = opt1.state_dict()
    other = [p.copy() for p in first]
    opt3 = fusedopt.AdamW(learning_rate=0.01, state_dtype=fmt)
    opt3.load_state_dict(state)
    _run(opt3, other, grads[3:])
    assert all(np.array_equal(a, b) for a, b in zip(other, straight))


def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path):
    params, grads = _problem()
    opt = fusedopt.AdamW(learning_rate=0.01, state_dtype="q8")
    _run(opt, params, grads[:2])
    path = tmp_path / "q8.safetensors"
    opt.save(path)
    for other in (dict(state_dtype="q4"), dict(state_dtype=None)):
        target = [p.copy() for p in params]
        opt2 = fusedopt.AdamW(learning_rate=0.01, **other)
        _run(opt2, target, grads[:1])
        before = [np.array(s, copy=True) for slots in opt2._engine.states for s in slots]
        with pytest.raises(checkpoint.CheckpointMismatch, match="is q8 in the checkpoint"):
            opt2.load(path)
        after = [np.array(s, copy=True) for slots in opt2._engine.states for s in slots]
        assert all(np.array_equal(a, b) for a, b in zip(before, after))

    meta, arrays = checkpoint.read(path)
    meta["params"][0]["slots"][0]["map"] = "linear"
    bad = tmp_path / "bad.safetensors"
    checkpoint.write(bad, arrays, meta)
    with pytest.raises(checkpoint.CheckpointMismatch, match="map 'linear'"):
        fusedopt.load(bad, [p.copy() for p in params]).apply_gradients(
            list(zip(grads[0], [p.copy() for p in params])))
    # "q8" with the dynamic map (saved before q8 took the power map): q8-dynamic state
    meta["params"][0]["slots"][0]["map"] = "dynamic"
    checkpoint.write(bad, arrays, meta)
    with pytest.raises(checkpoint.CheckpointMismatch, match="'m' is q8-dynamic in the "
                                                            "checkpoint, q8 here"):
        fusedopt.load(bad, [p.copy() for p in params]).apply_gradients(
            list(zip(grads[0], [p.copy() for p in params])))
    arrays["state/0/m/absmax"] = arrays["state/0/m/absmax"][:-1]
    meta["params"][0]["slots"][0]["map"] = "power"
    checkpoint.write(bad, arrays, meta)
    with pytest.raises(checkpoint.CheckpointMismatch, match="float32 scales"):
        fusedopt.load(bad, [p.copy() for p in params]).apply_gradients(
            list(zip(grads[0], [p.copy() for p in params])))


def test_bad_arguments_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match="'q8' or 'q4'"):
        fusedopt.Adam(state_dtype="q2")
    with pytest.raises(ValueError, match="min_quantized_size must be an int >= 0"):
        fusedopt.Adam(state_dtype="q8", min_quantized_size=-1)
    p = np.zeros(5000, np.float64)
    opt = fusedopt.Adam(state_dtype="q8")
    with pytest.raises(ValueError, match="float64; state_dtype='q8'"):
        opt.apply_gradients([(p.copy(), p)])


def test_config_round_trips():
    opt = fusedopt.Adam(state_dtype="q4", min_quantized_size=100)
    cfg = opt.get_config()
    assert cfg["state_dtype"] == "q4" and cfg["min_quantized_size"] == 100
    again = fusedopt.Adam.from_config(cfg)
    assert again.get_config() == cfg
