"""The power map's codes on the CPU (fusedopt/memory/quant_power.py): an entry by
arithmetic; a value's nearest code by a guess (one or two float32 square roots) that is
the nearest index or the one below it, and one comparison with the float32 midpoint above
the guess; a stochastically rounded code from the entry at or below
the value. No table, so that the quantized span's loops have no gathers.

Each function takes the slot k (0..3, a constant at every call site) and finds the slot's
constants (signed or non-negative) by it, as fusedopt/backends/cpu/codes.py finds a
slot's tables. The codes are the table search's (the count of float32 midpoints <= x,
halfway to the upper entry; NaN to the last code) and the entries the table's, bit for
bit: tests/test_quantized_power.py checks both on dense float32 inputs, and
benchmarks/power_codes_every_float.py the nearest code against the table search for every
float32 bit pattern (q8 and q4-power, both slot kinds: no difference).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from ...memory.quant_power import geometry
from ._cache import RULE, named
from .storage import bits_float, float_bits

_U = np.uint32
_MANTISSA = np.float32(2.0 ** -24)
#: The smallest x a non-negative slot's guess takes the root of: a negative x takes it
#: (index 0) instead of a NaN (a root of 2**-60 times N is far below one half).
_TINY = np.float32(2.0 ** -60)
#: What the fourth root's guess adds before its floor (the square root's adds nothing).
#: The nearest magnitude index m lies in u in [m - 1/2, m + 0.71) of the exact u = N
#: |x|**(1/p) (a midpoint's root lies at least halfway between its entries' roots, at
#: most 0.7075 above the lower for p = 4, j >= 1; 0.7072 for p = 2, j >= 0). The guess u'
#: is u from float32 square roots, each correctly rounded (IEEE 754), so within 1e-4 of
#: u either way (N <= 256, relative error below 2**-22 after two roots and the multiply).
#: floor(u' + c) is then m or m - 1 for any c in [-0.49, 0.28]: 0 for p = 2, 0.23 for
#: p = 4, so one comparison, with the midpoint above it, decides.
_NEAREST_LIFT = np.float32(0.23)


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
    sg0, sg1, sg2, sg3 = signed
    lift0, lift1, lift2, lift3 = (_NEAREST_LIFT if p == 4 else f(0.0) for _, _, p in geo)
    # p = 2: the entries are sign(j) j**2 / N**2, and a midpoint of two neighbours in float32
    # arithmetic is exact ((j**2 + (j+1)**2) / 2 has at most 16 bits): (j**2 + j + 1/2) / N**2
    # with the sign of the pair, the same bits as (e[j] + e[j+1]) * 0.5 computed from them.
    sq0, sq1, sq2, sq3 = (f(1.0 / (n * n)) for n, _, _ in geo)
    lo0, lo1, lo2, lo3 = (f(-o if s else 1) for (_, o, _), s in zip(geo, signed))
    hi0, hi1, hi2, hi3 = (f((1 << bits) - 1 - o) for _, o, _ in geo)
    zero, half, one, tiny = f(0.0), f(0.5), f(1.0), _TINY
    key = (bits, signed)

    @njit(inline="always", **RULE)
    @named(key)
    def at(k, j):
        """The entry of signed index j (the code less the slot's offset; a float32)."""
        inv = inv0 if k == 0 else (inv1 if k == 1 else (inv2 if k == 2 else inv3))
        four = four0 if k == 0 else (four1 if k == 1 else (four2 if k == 2 else four3))
        sg = sg0 if k == 0 else (sg1 if k == 1 else (sg2 if k == 2 else sg3))
        if not four:  # exact: j |j| has at most 16 bits, and 1 / N**2 is a power of two
            sq = sq0 if k == 0 else (sq1 if k == 1 else (sq2 if k == 2 else sq3))
            return (j * (abs(j) if sg else j)) * sq
        # a non-negative slot's j is its code plus one (>= 0 where taken): no sign to undo
        t = (abs(j) if sg else j) * inv
        t2 = t * t
        value = t2 * t2
        return -value if sg and j < zero else value

    @njit(inline="always", **RULE)
    @named(key)
    def above(k, j):
        """The float32 midpoint of entries j and j + 1: ``(at(k, j) + at(k, j + 1)) * 0.5``,
        bit for bit (p = 2: by the exact form above)."""
        four = four0 if k == 0 else (four1 if k == 1 else (four2 if k == 2 else four3))
        if four:
            return (at(k, j) + at(k, j + one)) * half
        sq = sq0 if k == 0 else (sq1 if k == 1 else (sq2 if k == 2 else sq3))
        sg = sg0 if k == 0 else (sg1 if k == 1 else (sg2 if k == 2 else sg3))
        value = (j * j + j + half) * sq
        return -value if sg and j < zero else value

    @njit(**RULE)
    @named(key)
    def entry(k, c):
        offset = o0 if k == 0 else (o1 if k == 1 else (o2 if k == 2 else o3))
        return at(k, f(c) - offset)

    @njit(inline="always", **RULE)
    @named(key)
    def guess(k, x):
        """An index within one of x's nearest and of the one at or below x: the power's
        inverse rounded, clamped to the map (NaN: its last index).

        u' = N |x|**(1/p) from float32 square roots is within 1e-4 of the exact u
        (:data:`_NEAREST_LIFT`). The nearest index j* has u in [j* - 1/2, j* + 0.71) (a
        midpoint's root lies at least halfway between its entries' roots), the index at
        or below x is floor(u): floor(u' + 1/2) is within one of both."""
        n = n0 if k == 0 else (n1 if k == 1 else (n2 if k == 2 else n3))
        four = four0 if k == 0 else (four1 if k == 1 else (four2 if k == 2 else four3))
        lo = lo0 if k == 0 else (lo1 if k == 1 else (lo2 if k == 2 else lo3))
        hi = hi0 if k == 0 else (hi1 if k == 1 else (hi2 if k == 2 else hi3))
        a = abs(x)
        t = np.sqrt(a)
        if four:
            t = np.sqrt(t)
        t = t if a < one else one  # also a NaN: the last index, as the table search
        j = np.floor(t * n + half)
        j = -j if x < zero else j
        j = j if j > lo else lo
        return j if j < hi else hi

    @njit(**RULE)
    @named(key)
    def nearest(k, x):
        """The code of the entry nearest x, halfway to the upper one: a magnitude index g
        at most one below the nearest (:data:`_NEAREST_LIFT`), then one comparison with
        the float32 midpoint above g. Ties go up in value: away from zero for x >= 0,
        toward it for x < 0, so a negative x steps up only past the midpoint.

        The guess's roots are the hardware's square root (``vsqrtps``), where an estimate
        from the float's bits and a Newton step took 16 vector instructions for v's two:
        on Zen 4 the square roots' step is the faster (benchmarks/RESULTS.md, "(AVX-512,
        Zen 4)"); either gives these codes."""
        n = n0 if k == 0 else (n1 if k == 1 else (n2 if k == 2 else n3))
        four = four0 if k == 0 else (four1 if k == 1 else (four2 if k == 2 else four3))
        sg = sg0 if k == 0 else (sg1 if k == 1 else (sg2 if k == 2 else sg3))
        offset = o0 if k == 0 else (o1 if k == 1 else (o2 if k == 2 else o3))
        lift = lift0 if k == 0 else (lift1 if k == 1 else (lift2 if k == 2 else lift3))
        # A non-negative slot's x < 0 takes the guess of tiny (index 0), then stays below
        # the first midpoint: the first code, as the table search gives it. |x| needs no
        # floor: its root is 0 or more (or a NaN, replaced below).
        a = abs(x) if sg else x
        t = np.sqrt(a if sg or a > tiny else tiny)
        if four:
            t = np.sqrt(t)
        t = t if a < one else one  # also a NaN: the last index, as the table search
        g = np.floor(t * n + lift if four else t * n)
        if four:
            mid = (at(k, g) + at(k, g + one)) * half
        else:
            sq = sq0 if k == 0 else (sq1 if k == 1 else (sq2 if k == 2 else sq3))
            mid = (g * g + g + half) * sq
        if not sg:
            m = g + (one if a >= mid else zero)  # never a NaN: g is not (t is not)
            return np.int32(min(max(m, one), n) + offset)
        # A tie goes to the upper entry: away from zero for x >= 0, toward it for x < 0,
        # where |x| steps up only past the midpoint (the next float32 above it).
        negative = x < zero
        mid = bits_float(float_bits(mid) + _U(1)) if negative else mid
        m = g + (one if a >= mid else zero)
        top = n - one if negative else n
        m = m if m < top else top
        return np.int32((-m if negative else m) + offset)

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
