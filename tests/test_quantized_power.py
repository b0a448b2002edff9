"""The power map (fusedopt/memory/quant_power.py; q8's default, and q4-power): its entries
from the definition, and its arithmetic codes (the CPU span's,
fusedopt/backends/cpu/codes_power.py, and the NumPy twin) against a search of its own
float32 table on dense float32 inputs: every entry, every midpoint (a tie: the upper
entry), the floats just below and above each, 0, -0, subnormals, a stride through every
float32 in [-1, 1], inf and NaN as the table search places them (NaN: the last code).
Stochastic codes against the definition: the entry at or below x, or the next with
probability (x - below) / gap, from the same random word.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from fusedopt.backends.cpu.codes_power import power_functions
from fusedopt.memory import quant, quant_power

#: (format, bits) of the formats that keep the power map
FORMATS = (("q8", 8), ("q4-power", 4))


def _definition(signed, bits):
    """sign(j) (|j| / N)**p, j the code less N - 1 (signed, N = 2**(bits - 1), p = 2), or
    ((c + 1) / N)**p (non-negative, N = 2**bits, p = 4), exact in float64, rounded once."""
    c = np.arange(2 ** bits)
    if signed:
        j = c - (2 ** (bits - 1) - 1)
        return (np.sign(j) * (np.abs(j) / 2.0 ** (bits - 1)) ** 2).astype(np.float32)
    return (((c + 1) / 2.0 ** bits) ** 4).astype(np.float32)


@pytest.mark.parametrize("fmt,bits", FORMATS)
@pytest.mark.parametrize("signed", [True, False])
def test_the_table_is_the_definition_and_the_arithmetic_decode(fmt, bits, signed):
    table = quant.qmap(fmt, signed)
    assert np.array_equal(table.view(np.int32), _definition(signed, bits).view(np.int32))
    assert np.all(np.diff(table) > 0) and table[-1] == 1.0
    assert (table[2 ** (bits - 1) - 1] == 0.0) if signed else (table[0] > 0)
    decoded = quant_power.decode(np.arange(2 ** bits), signed, bits)
    assert np.array_equal(decoded.view(np.int32), table.view(np.int32))


def _inputs(table, signed):
    """Dense float32 inputs around every entry and midpoint, special values, a stride
    through every float32 of the domain."""
    f32 = np.float32
    cuts = quant.thresholds(table)[:-1]
    points = np.concatenate([table, cuts])
    around = [points, np.nextafter(points, f32(np.inf)), np.nextafter(points, f32(-np.inf))]
    special = f32([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 1e-45, -1e-45, 1.2e-38, -1.2e-38,
                   2.0, -2.0])
    stride = np.arange(0, 0x3F800001, 4099, dtype=np.uint32).view(np.float32)  # [0, 1]
    rng = np.random.default_rng(0)
    small = (10.0 ** rng.uniform(-12, 0, 20_000)).astype(f32)
    x = np.concatenate(around + [special, stride, small])
    x = np.concatenate([x, -x]) if signed else x
    return x[np.isfinite(x) | np.isinf(x)]


def _searched(table, x):
    """The table rule (fusedopt/memory/quant.py ``encode``): the count of float32
    midpoints <= x, at most the last code; NaN sorts last."""
    return np.minimum(np.searchsorted(quant.thresholds(table), x, side="right"),
                      table.size - 1)


@njit
def _jitted_codes(nearest, k, x, out):
    for i in range(x.size):
        out[i] = nearest(k, x[i])


@njit
def _jitted_stochastic(stochastic, k, x, r, out):
    for i in range(x.size):
        out[i] = stochastic(k, x[i], r[i])


@pytest.mark.parametrize("fmt,bits", FORMATS)
def test_arithmetic_codes_are_the_table_search(fmt, bits):
    # slots 0 and 2 signed, 1 and 3 non-negative: the slot constant picks the map
    _, nearest, _ = power_functions(bits, (True, False, True, False))
    for k, signed in ((0, True), (1, False)):
        table = quant.qmap(fmt, signed)
        x = np.concatenate([_inputs(table, signed), np.float32([np.nan])])
        want = _searched(table, x)
        got = np.empty(x.size, np.int64)
        _jitted_codes(nearest, k, x, got)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (fmt, signed, x[bad[:5]], got[bad[:5]], want[bad[:5]])
        twin = quant_power.encode(x, signed, bits)
        assert np.array_equal(twin, want), (fmt, signed)
        # ties: a midpoint takes the upper entry, the float below it the lower one
        cuts = quant.thresholds(table)[:-1]
        exact = cuts[np.float64(cuts) == (np.float64(table[:-1]) + table[1:]) / 2]
        assert exact.size > 0
        _jitted_codes(nearest, k, exact, got[:exact.size])
        assert np.array_equal(got[:exact.size], np.searchsorted(table, exact))  # the upper


@pytest.mark.parametrize("fmt,bits", FORMATS)
def test_stochastic_codes_are_the_definition(fmt, bits):
    _, _, stochastic = power_functions(bits, (True, False, True, False))
    rng = np.random.default_rng(1)
    for k, signed in ((0, True), (1, False)):
        table = quant.qmap(fmt, signed)
        x = np.concatenate([_inputs(table, signed)[::7], rng.uniform(-1 if signed else 0, 1,
                                                                      100_000)]).astype(np.float32)
        x = np.clip(x, -1 if signed else 0, 1).astype(np.float32)
        r = rng.integers(0, 2 ** 32, x.size, dtype=np.uint64).astype(np.uint32)
        got = np.empty(x.size, np.int64)
        _jitted_stochastic(stochastic, k, x, r, got)
        below = np.maximum(np.searchsorted(table, x, side="right") - 1, 0)
        up = np.minimum(below + 1, table.size - 1)
        low, high = table[below], table[up]
        gap = high - low
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(gap > 0, (x - low) / gap, np.float32(0)).astype(np.float32)
        u = (r >> 8).astype(np.float32) * np.float32(2.0 ** -24)
        want = np.where(u < fraction, up, below)
        assert np.array_equal(got, want), (fmt, signed, np.count_nonzero(got != want))
        # it is stochastic: about the fraction's share of the values between two entries
        # go up
        inside = (x > low) & (x < high)
        assert abs(np.mean(got[inside] == up[inside]) - np.mean(fraction[inside])) < 0.01
