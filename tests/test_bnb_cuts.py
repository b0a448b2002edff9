"""fusedopt/memory/bnb_cuts.py holds bitsandbytes' CPU quantizer as 255 decision points per
8-bit dynamic map. These tests ask the installed quantizer itself: the points are still its
points, and they give its codes for values it has not been asked about (normalized by
blocks of any absmax, both maps)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("bitsandbytes")
torch = pytest.importorskip("torch")

from fusedopt.memory import bnb_cuts  # noqa: E402
from fusedopt.tools import bnb_cuts as measure  # noqa: E402


def _points(signed):
    return np.array(bnb_cuts.SIGNED if signed else bnb_cuts.UNSIGNED, np.uint32).view(np.float32)


@pytest.mark.parametrize("signed", [True, False])
def test_the_points_are_the_quantizers(signed):
    assert np.array_equal(measure.measure(signed).view(np.uint32),
                          _points(signed).view(np.uint32))


@pytest.mark.parametrize("signed", [True, False])
def test_the_points_give_the_quantizers_codes(signed):
    from bitsandbytes import functional

    rng = np.random.default_rng(7)
    n = 256 * 2000
    x = (rng.standard_normal(n) * rng.choice([1e-4, 1.0, 30.0], n)).astype(np.float32)
    if not signed:
        x = x * x
    x[:256] = 0.0                          # a block of zeros
    x[256:300] = np.float32(1e-41)         # subnormals
    codes, state = functional.quantize_blockwise(
        torch.from_numpy(x), code=functional.create_dynamic_map(signed=signed), blocksize=256)
    absmax = np.abs(x.reshape(-1, 256)).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = (x.reshape(-1, 256) / absmax[:, None]).astype(np.float32).reshape(-1)
    # the count of points <= x; none is <= NaN (a block of zeros: 0 / 0)
    ours = np.where(np.isnan(normed), 0, np.searchsorted(_points(signed), normed, side="right"))
    assert np.array_equal(ours, codes.numpy().astype(np.int64))
    table = functional.create_dynamic_map(signed=signed).double().numpy()
    middles = ((table[1:] + table[:-1]) / 2).astype(np.float32)
    rest = ~np.isnan(normed)  # not nearest rounding: the test tells the two apart
    assert not np.array_equal(ours[rest], np.searchsorted(middles, normed[rest], side="right"))
