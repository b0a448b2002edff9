"""The power map of quantized state (``state_dtype="q8-power"``; fusedopt/memory/quant.py):
entries that are powers of evenly spaced points, so that decoding is a multiply and the
nearest code of a value a square root or two and a correction, with no table and no search.

**Entries.** With ``bits``-bit codes c:

- signed slots: N = 2**(bits - 1), j = c - (N - 1) in [-(N - 1), N], entry
  ``sign(j) * (|j| / N) ** SIGNED_POWER``: 0 at c = N - 1, 1.0 the largest, -(1 - 1/N)**p
  the smallest (the same count below and above zero as the dynamic map's);
- non-negative slots (a second moment): N = 2**bits, entry ``((c + 1) / N) **
  UNSIGNED_POWER``, without zero: a second moment quantized to zero would make an update
  of m / eps (the reason q4's non-negative map starts at 1/16); the smallest entry is
  N**-p of the block's absmax, the largest 1.0.

Each entry is the exact power rounded once to float32. With N a power of two and p = 2 or
4, float32 arithmetic gives these bits: j / N is exact, (j / N)**2 is exact (j**2 has at
most 18 bits) and its square rounds once. So the arithmetic decode and the table agree bit
for bit, and the table serves every path that searches a sorted map (the unfused backend,
checkpoints, the state dicts' ``_qmap``).

**Nearest code.** The rule is the table's (fusedopt/memory/quant.py ``thresholds``): the
count of float32 midpoints of neighbouring entries that are <= x, so halfway goes to the
upper entry. The arithmetic encode takes j0 = round(N * |x|**(1/p)) (a square root for
p = 2, two for p = 4), which is the nearest index or one of its neighbours (a midpoint's
root lies between its entries' indices), then compares x with the two float32 midpoints
around j0, each ``(e[j] + e[j + 1]) * 0.5`` in float32 arithmetic (rounding a sum and
halving it is rounding the half: no entry is near float32's subnormals), and steps one
code down or up. A NaN (a block whose scale is NaN or inf) takes the last code, as the
table search puts it.

**Exponents.** Measured, not guessed (benchmarks/RESULTS.md, "Quantized state: the power
map"): p = 2 for signed slots and p = 4 for non-negative ones. A first moment m and a
second moment v ~ g**2 are then both on a quadratic map in the gradient's units (the
update divides by sqrt(v)): the relative step near the largest entry is 2/N (1.6% for q8
signed, 0.8% for q8 unsigned in sqrt(v)), and the smallest non-zero entry (1/N)**p
(6.1e-5 of the absmax for m, 2.3e-10 for v: 1.5e-5 in sqrt(v)).
"""

from __future__ import annotations

import numpy as np

#: The exponents of the power map (see the top).
SIGNED_POWER = 2
UNSIGNED_POWER = 4


def power(signed: bool) -> int:
    return SIGNED_POWER if signed else UNSIGNED_POWER


def geometry(signed: bool, bits: int) -> tuple[int, int, int]:
    """(N, offset, p): entry c is ``sign(j) * (|j| / N) ** p`` with j = c - offset."""
    if signed:
        n = 1 << (bits - 1)
        return n, n - 1, SIGNED_POWER
    return 1 << bits, -1, UNSIGNED_POWER


def power_map(signed: bool, bits: int = 8) -> np.ndarray:
    """The power map of ``bits``-bit codes, ascending, float32 (2**bits values), each entry
    the exact power rounded once."""
    n, offset, p = geometry(signed, bits)
    j = np.arange(1 << bits, dtype=np.int64) - offset
    exact = np.sign(j) * (np.abs(j).astype(np.float64) / n) ** p  # exact: < 53 bits
    return exact.astype(np.float32)


def decode(codes: np.ndarray, signed: bool, bits: int = 8) -> np.ndarray:
    """The entries of ``codes`` by float32 arithmetic (the CPU span's decode, in NumPy)."""
    n, offset, p = geometry(signed, bits)
    j = np.asarray(codes).astype(np.int32) - np.int32(offset)
    t = np.abs(j).astype(np.float32) * np.float32(1.0 / n)
    t2 = t * t
    value = t2 if p == 2 else t2 * t2
    return np.where(j < 0, -value, value).astype(np.float32)


def encode(x: np.ndarray, signed: bool, bits: int = 8) -> np.ndarray:
    """The nearest code of each float32 ``x`` (normalized: in [-1, 1], or [0, 1]) by
    float32 arithmetic, ties to the upper entry, NaN to the last code: the table search's
    codes (the CPU span's encode, in NumPy; a value beyond the map takes its end)."""
    n, offset, p = geometry(signed, bits)
    x = np.asarray(x, dtype=np.float32)
    lo, hi = -offset if signed else 1, (1 << bits) - 1 - offset
    with np.errstate(invalid="ignore"):
        t = np.sqrt(np.abs(x))
        if p == 4:
            t = np.sqrt(t)
        t = np.minimum(t, np.float32(1.0))  # also NaN -> 1.0 (NumPy keeps NaN; see below)
        j = np.rint(t * np.float32(n)).astype(np.int32)
        j = np.where(x < 0, -j, j)
        j = np.clip(j, lo, hi)
        below = _midpoint(j - 1, j, offset, signed, bits)
        above = _midpoint(j, j + 1, offset, signed, bits)
        j = j - ((j > lo) & (x < below)) + ((j < hi) & (x >= above))
        j = np.where(np.isnan(x), hi, j)
    return (j + offset).astype(np.int64)


def _midpoint(a, b, offset, signed, bits):
    """The float32 midpoint of the entries of signed indices ``a`` and ``b`` (arrays; one
    past an end is clamped to it)."""
    lo, hi = (-offset if signed else 1), (1 << bits) - 1 - offset
    ea = decode(np.clip(a, lo, hi) + offset, signed, bits)
    eb = decode(np.clip(b, lo, hi) + offset, signed, bits)
    return ((ea + eb) * np.float32(0.5)).astype(np.float32)
