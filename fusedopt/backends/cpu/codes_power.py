"""The power map's codes on the CPU (fusedopt/memory/quant_power.py): an entry by
arithmetic, a value's nearest code by one or two square roots and a correction against the
float32 midpoints of the entries around it, a stochastically rounded code from the entry
at or below the value; no table, so that the quantized span's loops have no gathers.

Each function takes the slot k (0..3, a constant at every call site) and finds the slot's
constants (signed or non-negative) by it, as fusedopt/backends/cpu/codes.py finds a
slot's tables. The codes are the table search's (the count of float32 midpoints <= x,
halfway to the upper entry; NaN to the last code) and the entries the table's, bit for
bit: tests/test_quantized_power.py checks both on dense float32 inputs.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from ...memory.quant_power import geometry
from ._cache import RULE, named

_U = np.uint32
_MANTISSA = np.float32(2.0 ** -24)


@functools.lru_cache(maxsize=None)
def power_functions(bits: int, signed: tuple):
    """(entry(k, c), nearest(k, x), stochastic(k, x, r)) for ``bits``-bit codes and the
    four slots' signs ``signed`` (True, False).

    Indices are carried as float32 (exact: |j| <= 256): Numba widens int32 arithmetic to
    int64, and AVX2 has no vector conversion between int64 and float, so integer indices
    would keep the encode loop scalar. One conversion to int32 gives the code."""
    geo = [geometry(s, bits) for s in signed]
    f = np.float32
    n0, n1, n2, n3 = (f(n) for n, _, _ in geo)
    inv0, inv1, inv2, inv3 = (f(1.0 / n) for n, _, _ in geo)
    o0, o1, o2, o3 = (f(o) for _, o, _ in geo)
    four0, four1, four2, four3 = (p == 4 for _, _, p in geo)
    lo0, lo1, lo2, lo3 = (f(-o if s else 1) for (_, o, _), s in zip(geo, signed))
    hi0, hi1, hi2, hi3 = (f((1 << bits) - 1 - o) for _, o, _ in geo)
    zero, half, one = f(0.0), f(0.5), f(1.0)
    key = (bits, signed)

    @njit(inline="always", **RULE)
    @named(key)
    def at(k, j):
        """The entry of signed index j (the code less the slot's offset; a float32)."""
        inv = inv0 if k == 0 else (inv1 if k == 1 else (inv2 if k == 2 else inv3))
        four = four0 if k == 0 else (four1 if k == 1 else (four2 if k == 2 else four3))
        t = abs(j) * inv
        t2 = t * t
        value = t2 * t2 if four else t2
        return -value if j < zero else value

    @njit(**RULE)
    @named(key)
    def entry(k, c):
        offset = o0 if k == 0 else (o1 if k == 1 else (o2 if k == 2 else o3))
        return at(k, f(c) - offset)

    @njit(inline="always", **RULE)
    @named(key)
    def guess(k, x):
        """An index within one of x's nearest and of the one at or below x: the power's
        inverse rounded, clamped to the map (NaN: its last index)."""
        n = n0 if k == 0 else (n1 if k == 1 else (n2 if k == 2 else n3))
        four = four0 if k == 0 else (four1 if k == 1 else (four2 if k == 2 else four3))
        lo = lo0 if k == 0 else (lo1 if k == 1 else (lo2 if k == 2 else lo3))
        hi = hi0 if k == 0 else (hi1 if k == 1 else (hi2 if k == 2 else hi3))
        t = np.sqrt(abs(x))
        if four:
            t = np.sqrt(t)
        t = t if t < one else one  # also a NaN: the last index, as the table search
        j = np.floor(t * n + half)
        j = -j if x < zero else j
        j = j if j > lo else lo
        return j if j < hi else hi

    @njit(**RULE)
    @named(key)
    def nearest(k, x):
        """The code of the entry nearest x, halfway to the upper one."""
        offset = o0 if k == 0 else (o1 if k == 1 else (o2 if k == 2 else o3))
        lo = lo0 if k == 0 else (lo1 if k == 1 else (lo2 if k == 2 else lo3))
        hi = hi0 if k == 0 else (hi1 if k == 1 else (hi2 if k == 2 else hi3))
        j = guess(k, x)
        middle = at(k, j)
        below = (at(k, j - one) + middle) * half
        above = (middle + at(k, j + one)) * half
        down = one if j > lo and x < below else zero
        up = one if j < hi and x >= above else zero
        return np.int32(j - down + up + offset)

    @njit(**RULE)
    @named(key)
    def stochastic(k, x, r):
        """The code of the entry at or below x, or of the next with probability
        (x - below) / (next - below), drawn from the random word r."""
        offset = o0 if k == 0 else (o1 if k == 1 else (o2 if k == 2 else o3))
        lo = lo0 if k == 0 else (lo1 if k == 1 else (lo2 if k == 2 else lo3))
        hi = hi0 if k == 0 else (hi1 if k == 1 else (hi2 if k == 2 else hi3))
        j = guess(k, x)
        down = one if j > lo and at(k, j) > x else zero
        up = one if j < hi and at(k, j + one) <= x else zero
        j = j - down + up
        low = at(k, j)
        high = at(k, j + one) if j < hi else low
        gap = high - low
        fraction = (x - low) / gap if gap > zero else zero
        u = f(r >> _U(8)) * _MANTISSA
        return np.int32(j + offset + (one if u < fraction else zero))

    return entry, nearest, stochastic
