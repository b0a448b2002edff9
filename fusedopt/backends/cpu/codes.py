"""The codes of quantized state (fusedopt/memory/quant.py's formats) on the CPU: a value's
nearest code by one table lookup and a comparison (:func:`buckets`), or a stochastically
rounded one, and per variant the jitted decode and encode of a block's codes
(:func:`block_functions`) that the quantized span (fusedopt/backends/cpu/quantized.py)
calls, every map a constant of them."""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from ...constants import MAX_SLOTS, STOCHASTIC
from ...memory.quant import FORMATS, cuts, qmap
from . import random_bits, storage
from ._cache import RULE, named
from .codes_power import power_functions
from .storage import float_bits

FORMAT_OF = {storage.Q8: FORMATS["q8"], storage.Q4: FORMATS["q4"],
             storage.Q8D: FORMATS["q8-dynamic"], storage.Q4P: FORMATS["q4-power"],
             storage.Q8B: FORMATS["q8-bitsandbytes"]}
_U = np.uint32
_MANTISSA = np.float32(2.0 ** -24)  # a uniform float in [0, 1) from 24 random bits


def buckets(table: np.ndarray) -> tuple[np.ndarray, int]:
    """(base, extra) of the ascending float32 ``table`` (padded with +inf): for each
    bfloat16 bit pattern b (the top half of a float32), ``base[b]`` is the count of entries
    <= the smallest float32 of that top half, and ``extra`` the most entries any top half
    holds above its smallest value. The count of entries <= x is then ``base[top(x)]``
    plus at most ``extra`` comparisons: a lookup instead of a search (every map here has
    ``extra`` = 1: its entries are further apart than a bfloat16 ulp)."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    negative = (bits & 0x8000) != 0
    low = np.where(negative, (bits << 16) | 0xFFFF, bits << 16).view(np.float32)
    high = np.where(negative, bits << 16, (bits << 16) | 0xFFFF).view(np.float32)
    with np.errstate(invalid="ignore"):
        base = np.searchsorted(table, low, side="right")
        top = np.searchsorted(table, high, side="right")
    nan = np.isnan(low)
    base[nan], top[nan] = 0, 0
    base = np.minimum(base, table.size - 1)  # the inf and NaN patterns: never normalized
    return base.astype(np.int32), int((top - base).max())


def _counter(levels: int, extra: int):
    """The jitted count of ``table``'s entries <= x (``base`` from :func:`buckets`), at most
    ``levels - 1``: the nearest code for the thresholds, the entry below x for the map."""
    last = levels - 1

    @njit(**RULE)
    @named(levels, extra)
    def count(base, table, x):
        c = np.int64(base[float_bits(np.float32(x)) >> _U(16)])
        for _ in range(extra):
            c = c + 1 if x >= table[c] else c
            c = c if c < last else last
        return c
    return count


def _stochastic(count):
    """The jitted code of ``x`` rounded stochastically with the random word ``r``: the
    entry at or below x, or the one above with probability (x - below) / (above - below)."""

    @njit(**RULE)
    @named(count.py_func.__qualname__)
    def rounded(values, base, above_table, x, r):
        c = count(base, above_table, x)  # entries values[1:] <= x: the index of the one below
        up = c + 1 if c + 1 < values.size else c
        low, high = values[c], values[up]
        gap = high - low
        fraction = (x - low) / gap if gap > 0 else np.float32(0.0)
        u = np.float32(r >> _U(8)) * _MANTISSA
        return up if u < fraction else c
    return rounded


@functools.lru_cache(maxsize=None)
def _format_constants(code: int, signed: tuple):
    """The format, the comparisons a lookup needs (:func:`buckets`), and per slot (four,
    unused and float32 ones the signed map): map values, nearest-rounding thresholds and
    their buckets, stochastic-rounding thresholds (the map's entries after the first,
    padded) and theirs."""
    fmt = FORMAT_OF[code]
    out = []
    extra = 0
    for k in range(MAX_SLOTS):
        sign = signed[k] if k < len(signed) else None
        values = qmap(fmt.name, True if sign is None else sign)  # None: a float32 slot
        above = np.concatenate([values[1:], np.float32([np.inf])]).astype(np.float32)
        points = cuts(fmt.name, True if sign is None else sign)
        (cut_base, e1), (above_base, e2) = buckets(points), buckets(above)
        extra = max(extra, e1, e2)
        out.append((values, points, cut_base, above, above_base))
    return fmt, extra, tuple(out)


@functools.lru_cache(maxsize=None)
def block_functions(variant):
    """(decode(k, bytes, base, i, scale), encode_block(k, bytes, base, values, length,
    absmax, key, first)) for a quantized VariantType, with its maps as constants: the
    dynamic map's tables, or the power map's arithmetic (fusedopt/backends/cpu/codes_power.py)."""
    fmt = FORMAT_OF[variant.codes[2]]
    if fmt.map == "power":
        signs = tuple(True if k >= len(variant.signed) or variant.signed[k] is None
                      else variant.signed[k] for k in range(MAX_SLOTS))
        return _coders(variant, fmt, *power_functions(fmt.bits, signs))
    return _coders(variant, fmt, *_table_functions(variant))


def _table_functions(variant):
    """(entry(k, c), nearest(k, x), stochastic(k, x, r)) of a variant's table maps: a
    gather, a bucket lookup and a comparison (:func:`buckets`)."""
    fmt, extra, slots = _format_constants(variant.codes[2], variant.signed)
    (v0, t0, tb0, a0, ab0), (v1, t1, tb1, a1, ab1), (v2, t2, tb2, a2, ab2), \
        (v3, t3, tb3, a3, ab3) = slots
    count = _counter(fmt.levels, extra)
    rounded = _stochastic(count)

    @njit(**RULE)
    @named(variant.key)
    def entry(k, c):
        values = v0 if k == 0 else (v1 if k == 1 else (v2 if k == 2 else v3))
        return values[c]

    @njit(**RULE)
    @named(variant.key)
    def nearest(k, x):
        table = t0 if k == 0 else (t1 if k == 1 else (t2 if k == 2 else t3))
        base = tb0 if k == 0 else (tb1 if k == 1 else (tb2 if k == 2 else tb3))
        return count(base, table, x)

    @njit(**RULE)
    @named(variant.key)
    def stochastic(k, x, r):
        values = v0 if k == 0 else (v1 if k == 1 else (v2 if k == 2 else v3))
        above = a0 if k == 0 else (a1 if k == 1 else (a2 if k == 2 else a3))
        base = ab0 if k == 0 else (ab1 if k == 1 else (ab2 if k == 2 else ab3))
        return rounded(values, base, above, x, r)

    return entry, nearest, stochastic


def _coders(variant, fmt, entry, nearest, stochastic):
    """decode and encode of a block's codes from a map's entry(k, c), nearest(k, x) and
    stochastic(k, x, r) (the random bits drawn per element and slot here)."""
    four = fmt.bits == 4
    random = variant.mode == STOCHASTIC
    bits0, bits1, bits2, bits3 = random_bits.ARRAY_BITS[1:1 + MAX_SLOTS]
    element_hash = random_bits.element_hash

    @njit(**RULE)
    @named(variant.key)
    def code_at(codes, i):
        if four:
            byte = codes[i >> 1]
            return (byte >> np.uint8(4)) if i & 1 else (byte & np.uint8(15))
        return codes[i]

    @njit(**RULE)
    @named(variant.key)
    def decode(k, codes, i, scale):
        return entry(k, code_at(codes, i)) * scale

    @njit(**RULE)
    @named(variant.key)
    def code_of(k, x, key, index):
        if random:
            e = element_hash(key, index)
            r = bits0(e) if k == 0 else (bits1(e) if k == 1 else (
                bits2(e) if k == 2 else bits3(e)))
            return stochastic(k, x, r)
        return nearest(k, x)

    # inlined into the block's function: no call, and no array records built for it, per
    # block and slot (benchmarks/RESULTS.md, "(AVX-512, Zen 4)")
    @njit(inline="always", **RULE)
    @named(variant.key)
    def encode(k, data, base, scales, values, length, absmax, key, first):
        scales[0] = absmax
        inverse_ok = absmax > 0
        codes = data[base + 4:]  # indexed from 0: no negative-index wraparound per element
        if four:
            for j in range((length + 1) >> 1):
                i = 2 * j
                x = values[i] / absmax if inverse_ok else np.float32(0.0)
                low = code_of(k, x, key, first + i)
                high = 0
                if i + 1 < length:
                    y = values[i + 1] / absmax if inverse_ok else np.float32(0.0)
                    high = code_of(k, y, key, first + i + 1)
                codes[j] = np.uint8(low | (high << 4))
        else:
            for i in range(length):
                x = values[i] / absmax if inverse_ok else np.float32(0.0)
                codes[i] = np.uint8(code_of(k, x, key, first + i))

    return decode, encode
