"""Quantized state in its global form (fusedopt/memory/quant_global.py) and through
torch.distributed.checkpoint in one process (``fusedopt.torch.reshardable``); the 2-rank
FSDP2 saves and loads at other world sizes are in tests/test_torch_distributed_quantized.py.

At the sharding a slot was saved from, its codes and absmax come back bit for bit; at
another, every element is within ``(D + 2**-22) * a`` of its saved value, ``a`` the largest
|saved value| of the new block and D the largest distance from a point of the map's domain
to its nearest entry, derived here from the maps' construction (Dettmers' dynamic map:
midpoints of an even split of the top decade [0.1, 1]; q4's non-negative map (k + 1) / 16;
the power maps' top gaps)."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt.torch  # noqa: F401  (before torch: one OpenMP pool)
from fusedopt.memory import quant
from fusedopt.memory import quant_global as qg

torch = pytest.importorskip("torch")

#: D by (format, signed). q8 signed: the top decade split in 64, entries at its midpoints,
#: so half a gap is 0.9 / 128, as is -1's distance to the lowest entry -(1 - 0.9 / 128);
#: unsigned: split in 128, half a gap 0.9 / 256 (1.0 is an entry). q4 signed: the top
#: decade split in 4: 0.9 / 8; unsigned (k + 1) / 16: 0 is 1 / 16 from the lowest entry.
#: The power maps (q8 and q4-power; N = 128 and 8 signed, 256 and 16 non-negative):
#: signed, -1 to the lowest entry -(1 - 1/N)**2, as wide as the top gap; non-negative, half
#: the top gap 1 - (1 - 1/N)**4 (0 is (1/N)**4 from the lowest entry).
REACH = {("q8-dynamic", True): 0.9 / 128, ("q8-dynamic", False): 0.9 / 256,
         ("q4", True): 0.9 / 8, ("q4", False): 1 / 16,
         ("q8", True): 1 - (127 / 128) ** 2, ("q8", False): (1 - (255 / 256) ** 4) / 2,
         ("q4-power", True): 1 - (7 / 8) ** 2, ("q4-power", False): (1 - (15 / 16) ** 4) / 2}
SLACK = 2.0 ** -22
CASES = [(fmt, signed) for fmt in ("q8", "q4", "q8-dynamic", "q4-power")
         for signed in (True, False)]


def _state(rows, row, signed, seed=0):
    """Awkward values: wide magnitudes, a block whose largest |x| is negative, zeros,
    a NaN, subnormal values (blocks of subnormal scale where rows are long)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, row)) * 10.0 ** rng.integers(-6, 3, (rows, 1)))
    x = x.astype(np.float32)
    x[3] = -np.abs(x[3]) if signed else x[3]
    x[7:11] = 0
    x[12:14] = rng.standard_normal((2, row)) * 1e-40  # subnormal scales
    x[rows - 2, row // 2] = np.nan
    return np.abs(x) if not signed else x


def _saved(x, bounds, fmt, signed):
    """Each shard of ``x`` (rows between ``bounds``) quantized in its own blocks: the
    buffers, and the global form (decoded values, scales by row) of all of them."""
    row = x.shape[1]
    buffers, values, tables = [], [], []
    for a, b in zip(bounds, bounds[1:]):
        buffer = quant.quantize(x[a:b].reshape(-1), fmt, signed)
        _, absmax = quant.codes_and_scales(buffer, (b - a) * row, fmt)
        buffers.append(buffer)
        values.append(quant.dequantize(buffer, (b - a) * row, fmt, signed))
        tables.append(qg.scales_by_row(absmax, b - a, row, fmt))
    return buffers, np.concatenate(values), np.concatenate(tables)


@pytest.mark.parametrize("fmt,signed", CASES)
def test_the_reach_of_each_map_is_the_hand_derived_one(fmt, signed):
    entries = quant.qmap(fmt, signed).astype(np.float64)
    y = np.linspace(-1.0 if signed else 0.0, 1.0, 400_001)
    k = np.clip(np.searchsorted(entries, y), 1, entries.size - 1)
    reach = np.minimum(np.abs(y - entries[k - 1]), np.abs(y - entries[k])).max()
    assert REACH[fmt, signed] - 1e-6 < reach <= REACH[fmt, signed] + 2.0 ** -24
    assert qg.MAP_REACH[fmt, signed] == REACH[fmt, signed]


@pytest.mark.parametrize("fmt,signed", CASES)
@pytest.mark.parametrize("row", [40, 300, 1])
def test_the_same_sharding_comes_back_bit_for_bit_and_another_within_the_bound(
        fmt, signed, row):
    rows = 131 if row > 1 else 5003
    x = _state(rows, row, signed)
    saved_at = [0, 66, rows]
    buffers, values, table = _saved(x, saved_at, fmt, signed)
    for (a, b), buffer in zip(zip(saved_at, saved_at[1:]), buffers):
        again, kept = qg.to_blocks(values[a * row:b * row], table[a:b], row, fmt, signed)
        assert np.array_equal(again, buffer)
        assert kept == quant.FORMATS[fmt].blocks((b - a) * row)
    block, worst, changed = quant.FORMATS[fmt].block, 0.0, 0
    for loaded_at in ([0, rows], [0, 44, 88, rows], [0, 65, rows], [0, 1, 66, rows]):
        for a, b in zip(loaded_at, loaded_at[1:]):
            want = values[a * row:b * row]
            buffer, _ = qg.to_blocks(want, table[a:b], row, fmt, signed)
            got = quant.dequantize(buffer, want.size, fmt, signed).astype(np.float64)
            for s in range(0, want.size, block):
                w = want[s:s + block].astype(np.float64)
                if np.isnan(w).any():  # a NaN block stays NaN, as its saved scale says
                    assert np.isnan(got[s:s + block]).all()
                    continue
                bound = (REACH[fmt, signed] + SLACK) * np.abs(w).max() + 2.0 ** -149
                error = np.abs(got[s:s + block] - w)
                assert (error <= bound).all(), (loaded_at, a, s, error.max(), bound)
                worst = max(worst, float((error / bound).max()))
                changed += int((error > 0).sum())
    assert changed > 0 and worst > 0.3, (changed, worst)  # the bound is reached, nearly


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(40, 131), torch.nn.Tanh(),
                               torch.nn.Linear(131, 5))


def _train(model, opt, steps):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 40, generator=g)
    y = torch.randint(0, 5, (32,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _fresh(model, fmt):
    other = _model()
    other.load_state_dict(model.state_dict())
    return other, fusedopt.torch.AdamW(other.parameters(), lr=1e-2, state_dtype=fmt)


@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_dcp_in_one_process_loads_bit_for_bit_and_continues(fmt, tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    model = _model()
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-2, state_dtype=fmt)
    _train(model, opt, 3)
    with fusedopt.torch.reshardable(opt):
        osd = get_optimizer_state_dict(model, opt)
    form = osd["state"]["0.weight"]["exp_avg"]
    assert form["values"].dtype == torch.float32 and form["values"].shape == (131, 40)
    assert form["absmax_by_row"].shape == (131, 1)
    assert isinstance(opt.state_dict()["state"][0]["exp_avg_absmax"], torch.Tensor)
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"optim": osd}, checkpoint_id=str(tmp_path))
    other, opt2 = _fresh(model, fmt)
    with fusedopt.torch.reshardable(opt2):
        template = get_optimizer_state_dict(other, opt2)
    with pytest.warns(UserWarning, match="single process"):
        dcp.load({"optim": template}, checkpoint_id=str(tmp_path))
    set_optimizer_state_dict(other, opt2, template)
    ours, theirs = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(ours[k][key], theirs[k][key]) for k in ours for key in ours[k])
    _train(model, opt, 2)
    _train(other, opt2, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def _refused(opt, state_dict):
    before = {k: {key: v.clone() for key, v in s.items()} for k, s in
              opt.state_dict()["state"].items()}
    with pytest.raises(ValueError) as error:
        opt.load_state_dict(state_dict)
    after = opt.state_dict()["state"]
    assert all(torch.equal(v, after[k][key]) for k, s in before.items()
               for key, v in s.items())
    return str(error.value)


def test_a_global_form_that_does_not_fit_is_refused_and_nothing_changes():
    model = _model()
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-2, state_dtype="q8")
    _train(model, opt, 2)
    with fusedopt.torch.reshardable(opt):
        saved = opt.state_dict()
    other, opt2 = _fresh(model, "q8")
    _train(other, opt2, 1)

    q4 = {**saved, "param_groups": [{**saved["param_groups"][0], "state_dtype": "q4"}]}
    message = _refused(opt2, q4)
    assert "'exp_avg' is q8 state" in message and "state_dtype='q4'" in message

    narrow = {**saved, "state": dict(saved["state"])}
    entry = narrow["state"][0] = dict(saved["state"][0])
    entry["exp_avg"] = {**entry["exp_avg"], "values": entry["exp_avg"]["values"][:130]}
    message = _refused(opt2, narrow)
    assert "of shape (130, 40)" in message and "(131, 40)" in message

    bad = {**saved, "state": {**saved["state"], 0: {**saved["state"][0], "exp_avg": {
        **saved["state"][0]["exp_avg"], "format": torch.tensor([8, 64, 1])}}}}
    assert "[8, 64, 1], not [bits, block, signed, map]" in _refused(opt2, bad)

    # the map is part of the format: the dynamic map's blocks do not load as the power map's
    power = {**saved, "param_groups": [{**saved["param_groups"][0],
                                        "state_dtype": "q8-power"}]}
    message = _refused(opt2, power)
    assert "'exp_avg' is q8 state" in message and "state_dtype='q8-power'" in message

    sgd = fusedopt.torch.SGD(other.parameters(), lr=1e-2, momentum=0.9, state_dtype="q8")
    _train(other, sgd, 1)
    assert "another optimizer" in _refused(sgd, saved)
    _train(model, opt, 1)
    _train(other, opt2, 1)  # opt2 still steps as a 1-step run continued


def test_dcp_refuses_another_shape_and_another_optimizer_and_nothing_changes(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    model = _model()
    opt = fusedopt.torch.AdamW(model.parameters(), lr=1e-2, state_dtype="q8")
    _train(model, opt, 1)
    with fusedopt.torch.reshardable(opt):
        osd = get_optimizer_state_dict(model, opt)
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"optim": osd}, checkpoint_id=str(tmp_path))
    torch.manual_seed(0)
    wider = torch.nn.Sequential(torch.nn.Linear(40, 132), torch.nn.Tanh(),
                                torch.nn.Linear(132, 5))
    sgd = fusedopt.torch.SGD(model.parameters(), lr=1e-2, momentum=0.9, state_dtype="q8")
    for other, wanted in ((fusedopt.torch.AdamW(wider.parameters(), lr=1e-2,
                                                state_dtype="q8"), "Size mismatch"),
                          (sgd, "Missing key")):
        net = wider if other is not sgd else model
        _train(net, other, 1)
        before = {k: {key: v.clone() for key, v in s.items()}
                  for k, s in other.state_dict()["state"].items()}
        with fusedopt.torch.reshardable(other):
            template = get_optimizer_state_dict(net, other)
        with pytest.warns(UserWarning, match="single process"), \
                pytest.raises(dcp.api.CheckpointException) as error:
            dcp.load({"optim": template}, checkpoint_id=str(tmp_path))
        assert wanted in str(error.value.failures[0]), error.value.failures
        after = other.state_dict()["state"]
        assert all(torch.equal(v, after[k][key]) for k, s in before.items()
                   for key, v in s.items())
