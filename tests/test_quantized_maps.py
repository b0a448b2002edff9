"""The maps and the buffer layout of quantized state against the peers' own: q8-dynamic's
maps against ``bitsandbytes.functional.create_dynamic_map`` entry for entry (codes mean the
same value), q4's against torchao's AdamW4bit maps; the block layout's round trip."""

from __future__ import annotations

import numpy as np
import pytest

from fusedopt.memory import quant

#: bitsandbytes builds the map with float32 roundings along the way; fusedopt rounds the
#: exact construction once: entries differ by at most this many float32 ulps.
MAP_ULPS = 2


def _ulps(a, b):
    return np.abs(a.astype(np.float32).view(np.int32).astype(np.int64)
                  - b.astype(np.float32).view(np.int32))


@pytest.mark.parametrize("signed", [True, False])
def test_q8_maps_are_bitsandbytes_dynamic_maps_code_for_code(signed):
    functional = pytest.importorskip("bitsandbytes.functional")
    theirs = functional.create_dynamic_map(signed=signed).numpy()
    ours = quant.qmap("q8-dynamic", signed)
    assert ours.shape == theirs.shape == (256,)
    assert np.all(np.diff(ours) > 0) and np.all(np.diff(theirs) > 0)  # same order
    assert _ulps(ours, theirs).max() <= MAP_ULPS
    assert ours[0] == theirs[0] and ours[-1] == theirs[-1] == 1.0
    # nearest codes of many values: the same with either map but at float32 ties
    x = np.random.default_rng(0).uniform(-1 if signed else 0, 1, 200_000)
    mine = np.searchsorted(quant.thresholds(ours).astype(np.float64), x, side="right")
    cuts = ((theirs[:-1].astype(np.float64) + theirs[1:]) / 2)
    other = np.searchsorted(cuts, x, side="right")
    assert np.mean(mine == other) >= 0.9999


def test_q4_maps_are_torchaos():
    quant_utils = pytest.importorskip("torchao.optim.quant_utils")
    signed = np.array(quant_utils.create_dynamic_map(True, 3, 4), np.float32)
    assert signed.shape == (16,)
    assert _ulps(quant.qmap("q4", True), signed).max() <= MAP_ULPS
    unsigned = np.linspace(0, 1, 17)[1:]
    np.testing.assert_allclose(quant.qmap("q4", False), unsigned, rtol=0, atol=1e-7)


@pytest.mark.parametrize("fmt", ["q8", "q4"])
@pytest.mark.parametrize("n", [1, 127, 128, 129, 256, 257, 1000])
def test_the_layout_round_trips(fmt, n):
    rng = np.random.default_rng(n)
    f = quant.FORMATS[fmt]
    codes = rng.integers(0, f.levels, n).astype(np.uint8)
    absmax = rng.random(f.blocks(n)).astype(np.float32)
    buffer = quant.pack(codes, absmax, fmt)
    assert buffer.size == f.nbytes(n) == 4 * f.blocks(n) + f.code_bytes(n)
    got_codes, got_max = quant.codes_and_scales(buffer, n, fmt)
    assert np.array_equal(got_codes, codes) and np.array_equal(got_max, absmax)
    records = quant.to_records(buffer, n, fmt)
    assert np.array_equal(quant.from_records(records["codes"], records["absmax"], n, fmt),
                          buffer)
    with pytest.raises(ValueError, match="float32 scales"):
        quant.from_records(records["codes"], records["absmax"][:-1], n, fmt)
