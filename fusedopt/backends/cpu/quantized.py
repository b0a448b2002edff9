"""The CPU span of quantized state (``state_dtype="q8"``/``"q4"``): one pass per block.

The table walk (fusedopt/backends/cpu/loop.py) hands a span of one tensor to this function
as it hands a span to the float one, with the slots' base addresses (their blocks are
found from the element index, fusedopt/memory/quant.py) and the span's first element
index, always the first of a block (the CPU backend's chunks are whole blocks). For each
block of the span:

1. read each slot's absmax; for each element, read its codes, decode them in registers
   (``map[code] * absmax``), run the rule through the param's mode exactly as the float
   span does (fusedopt/backends/cpu/element.py's param handling), store the param (and its
   master slot, its moving average), keep the new slot values in a block-sized scratch
   and their new absmax;
2. write each slot's absmax and its codes: the nearest map entry to ``value / absmax``
   (ties to the upper entry), or with stochastic rounding the entry below or above with
   probability proportional to the distance, drawn from the element's random bits for
   that slot (the bits the float state of the same slot would have used).

So the state is read once and written once, and no float copy of it exists beyond the
block being stepped (4 x 256 floats per thread). Blocks of a tensor are independent, so
Numba's threads share the work items of a table as for float state.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
from numba import carray, njit, types
from numba.core.extending import intrinsic, overload

from ...constants import MAX_SLOTS, STOCHASTIC
from ...memory.quant import FORMATS, qmap, thresholds
from . import random_bits, storage
from ._cache import JIT_OPTIONS
from .element import _param_io
from .loop import (
    _SPAN_FUNCTIONS,
    _average_scalars,
    _grad_at,
    _in_compute_type,
    _layout,
    _master_at,
    _param_at,
    _prefer_wide_vectors,
    _rule_scalars,
    span_signature,
)
from .storage import bits_float, float_bits
from .variant import _RULES, WITH_SLOT

_FORMAT_OF = {storage.Q8: FORMATS["q8"], storage.Q4: FORMATS["q4"]}
# Plain jitted functions, not Numba's IR inlining (which recompiles a callee's IR at every
# call site: 20-35 s per variant here); LLVM inlines them all the same.
_RULE = {"error_model": "numpy"}
_U = np.uint32
_ABS = np.uint32(0x7FFFFFFF)
_MANTISSA = np.float32(2.0 ** -24)  # a uniform float in [0, 1) from 24 random bits


@intrinsic
def _bytes_at(typingctx, address):
    """The int64 ``address`` as a pointer to bytes."""
    sig = types.CPointer(types.uint8)(address)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


@intrinsic
def _floats_at(typingctx, address):
    """The int64 ``address`` as a pointer to float32."""
    sig = types.CPointer(types.float32)(address)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


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


def _named(*key):
    """Names a closure by what it closes over, before it is jitted.

    These closures are compiled as functions of their own (not inlined by Numba), and
    Numba's symbol for a function is its qualified name, its argument types and a counter
    of the process that compiled it. Two processes can give two closures of one factory
    (say, ``encode`` for q4's unsigned map and for q8's signed one) the same symbol, and a
    process that loads both from the on-disk cache then links every call to the first it
    loaded: codes from another map. Named by their constants, two closures share a name
    only where they are the same function."""
    tag = hashlib.sha256(repr(key).encode()).hexdigest()[:12]

    def rename(function):
        function.__name__ = f"{function.__name__}_{tag}"
        function.__qualname__ = f"{function.__qualname__}_{tag}"
        return function
    return rename


def _counter(levels: int, extra: int):
    """The jitted count of ``table``'s entries <= x (``base`` from :func:`buckets`), at most
    ``levels - 1``: the nearest code for the thresholds, the entry below x for the map."""
    last = levels - 1

    @njit(**_RULE)
    @_named(levels, extra)
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

    @njit(**_RULE)
    @_named(count.py_func.__qualname__)
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
    unused ones the signed map): map values, nearest-rounding thresholds and their buckets,
    stochastic-rounding thresholds (the map's entries after the first, padded) and theirs."""
    fmt = _FORMAT_OF[code]
    out = []
    extra = 0
    for k in range(MAX_SLOTS):
        values = qmap(fmt.name, signed[k] if k < len(signed) else True)
        above = np.concatenate([values[1:], np.float32([np.inf])]).astype(np.float32)
        cuts = thresholds(values)
        (cut_base, e1), (above_base, e2) = buckets(cuts), buckets(above)
        extra = max(extra, e1, e2)
        out.append((values, cuts, cut_base, above, above_base))
    return fmt, extra, tuple(out)


@functools.lru_cache(maxsize=None)
def _block_functions(variant):
    """(decode(k, bytes, base, i, scale), encode_block(k, bytes, base, values, length,
    absmax, key, first)) for a quantized VariantType, with its maps as constants."""
    fmt, extra, slots = _format_constants(variant.codes[2], variant.signed)
    levels, four = fmt.levels, fmt.bits == 4
    (v0, t0, tb0, a0, ab0), (v1, t1, tb1, a1, ab1), (v2, t2, tb2, a2, ab2), \
        (v3, t3, tb3, a3, ab3) = slots
    count = _counter(levels, extra)
    stochastic = _stochastic(count)
    random = variant.mode == STOCHASTIC
    bits0, bits1, bits2, bits3 = random_bits.ARRAY_BITS[1:1 + MAX_SLOTS]
    element_hash = random_bits.element_hash

    @njit(**_RULE)
    @_named(variant.key)
    def code_at(codes, i):
        if four:
            byte = codes[i >> 1]
            return (byte >> np.uint8(4)) if i & 1 else (byte & np.uint8(15))
        return codes[i]

    @njit(**_RULE)
    @_named(variant.key)
    def decode(k, codes, i, scale):
        c = code_at(codes, i)
        values = v0 if k == 0 else (v1 if k == 1 else (v2 if k == 2 else v3))
        return values[c] * scale

    @njit(**_RULE)
    @_named(variant.key)
    def code_of(k, x, key, index):
        values = v0 if k == 0 else (v1 if k == 1 else (v2 if k == 2 else v3))
        if random:
            above = a0 if k == 0 else (a1 if k == 1 else (a2 if k == 2 else a3))
            base = ab0 if k == 0 else (ab1 if k == 1 else (ab2 if k == 2 else ab3))
            e = element_hash(key, index)
            r = bits0(e) if k == 0 else (bits1(e) if k == 1 else (
                bits2(e) if k == 2 else bits3(e)))
            return stochastic(values, base, above, x, r)
        table = t0 if k == 0 else (t1 if k == 1 else (t2 if k == 2 else t3))
        base = tb0 if k == 0 else (tb1 if k == 1 else (tb2 if k == 2 else tb3))
        return count(base, table, x)

    @njit(**_RULE)
    @_named(variant.key)
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


@functools.lru_cache(maxsize=None)
def _element(variant):
    """One element's step on decoded slot values: (stored param, grad, four slot values in
    the compute type, master-slot element, average) -> (stored param, four new slot
    values, master-slot element, average), the param kept as its mode keeps it."""
    rule = _RULES[variant.rule]
    pcode, gcode, _ = variant.codes
    clamps, average = variant.clamps, variant.average
    get_p, put_p = _param_io(variant.mode, pcode)
    load_p, store_p = storage.load(pcode), storage.store(pcode)
    load_g = storage.load(gcode)
    element_hash = random_bits.element_hash
    zero = np.float32(0.0)

    @njit(**_RULE)
    @_named(variant.key)
    def one(pv, gv, a0, b0, c0, d0, xv, vv, h, ema, scale, limit, key, index):
        low = -limit
        scaled = load_g(gv) * scale if clamps else load_g(gv)
        above = (low if low > scaled else scaled) if clamps else scaled
        gi = (limit if limit < above else above) if clamps else above
        pi, a, b, c, d = rule(get_p(pv, xv), gi, a0, b0, c0, d0, zero, h)
        e = element_hash(key, index)  # unused (and dropped) unless STOCHASTIC
        p_new, x_new = put_p(pi, e, xv)
        v_new = store_p(ema[0] * load_p(vv) + ema[1] * load_p(p_new)) if average else vv
        return p_new, a, b, c, d, x_new, v_new
    return one


def _block(variant, p, g, d0, d1, d2, d3, f0, f1, f2, f3, x, v, h, ema, scale, limit, key, lo,
           first, length, base, scratch):
    """One block of a span (resolved per variant): elements ``lo`` .. ``lo + length`` of
    the span's arrays (``first`` the index of ``lo`` in its tensor, a key of the random
    bits), its slots' records at byte ``base`` of ``d0``..``d3`` and their absmax in
    ``f0``..``f3`` (one float each)."""


@overload(_block)
def _block_variant(variant, p, g, d0, d1, d2, d3, f0, f1, f2, f3, x, v, h, ema, scale, limit,
                   key,
                   lo, first, length, base, scratch):
    decode, encode = _block_functions(variant)
    one = _element(variant)
    ns, master, average = variant.n_slots, variant.mode in WITH_SLOT, variant.average
    none = np.float32(0.0)

    def body(variant, p, g, d0, d1, d2, d3, f0, f1, f2, f3, x, v, h, ema, scale, limit, key,
             lo,
             first, length, base, scratch):
        sa = f0[0] if ns > 0 else none
        sb = f1[0] if ns > 1 else none
        sc = f2[0] if ns > 2 else none
        sd = f3[0] if ns > 3 else none
        # Every array indexed from 0 by the loop's own counter: an index like lo + i may be
        # negative for all Numba knows, and its wraparound select per element keeps LLVM
        # from vectorizing the loop.
        q0, q1, q2, q3 = d0[base + 4:], d1[base + 4:], d2[base + 4:], d3[base + 4:]
        pb, gb = p[lo:lo + length], g[lo:lo + length]
        xb, vb = x[lo:lo + length], v[lo:lo + length]
        # Decoded first, in a loop of their own (gathers from the map), so that the rule's
        # loop below reads and writes plain float32 rows, as the float span does.
        for i in range(length):
            if ns > 0:
                scratch[0, i] = decode(0, q0, i, sa)
            if ns > 1:
                scratch[1, i] = decode(1, q1, i, sb)
            if ns > 2:
                scratch[2, i] = decode(2, q2, i, sc)
            if ns > 3:
                scratch[3, i] = decode(3, q3, i, sd)
        for i in range(length):
            a0 = scratch[0, i] if ns > 0 else none
            b0 = scratch[1, i] if ns > 1 else none
            c0 = scratch[2, i] if ns > 2 else none
            e0 = scratch[3, i] if ns > 3 else none
            new = one(pb[i], gb[i], a0, b0, c0, e0, xb[i] if master else none,
                      vb[i] if average else pb[i], h, ema, scale, limit, key, first + i)
            pb[i] = new[0]
            if master:
                xb[i] = new[5]
            if average:
                vb[i] = new[6]
            if ns > 0:
                scratch[0, i] = np.float32(new[1])
            if ns > 1:
                scratch[1, i] = np.float32(new[2])
            if ns > 2:
                scratch[2, i] = np.float32(new[3])
            if ns > 3:
                scratch[3, i] = np.float32(new[4])
        if ns > 0:
            encode(0, d0, base, f0, scratch[0], length, absmax(scratch[0], length), key,
                   first)
        if ns > 1:
            encode(1, d1, base, f1, scratch[1], length, absmax(scratch[1], length), key,
                   first)
        if ns > 2:
            encode(2, d2, base, f2, scratch[2], length, absmax(scratch[2], length), key,
                   first)
        if ns > 3:
            encode(3, d3, base, f3, scratch[3], length, absmax(scratch[3], length), key,
                   first)
    return body


@njit(**_RULE)
def absmax(values, length):
    """The largest |value| of ``values[:length]``, a NaN if one is NaN: the integer maximum
    of their bits without the sign (ordered as the magnitudes, every NaN above inf), a
    reduction the vectorizer takes, where a float maximum that keeps NaN is not."""
    top = _U(0)
    for i in range(length):
        bits = float_bits(values[i]) & _ABS
        top = bits if bits > top else top
    return bits_float(top)


def _format_of(variant):
    """(elements per block, bytes per block record, bytes of codes per element pair) of a
    quantized VariantType."""


@overload(_format_of, inline="always")
def _format_of_variant(variant):
    fmt = _FORMAT_OF[variant.codes[2]]
    block, record = fmt.block, fmt.record

    def body(variant):
        return block, record
    return body


def _qspan(variant, p, g, s0, s1, s2, s3, x, v, n, scalars, scale, limit, key, offset):
    """``n`` elements of one tensor from element ``offset`` (the first of a block), the
    slots quantized (the signature of fusedopt/backends/cpu/loop.py's span)."""
    _prefer_wide_vectors()
    ns, master, _, _, average = _layout(variant)
    h = _rule_scalars(scalars[0], variant)
    ema = _average_scalars(scalars[0], variant)
    scale_, limit_ = _in_compute_type((scale, limit), variant)
    block, record = _format_of(variant)
    first_block = offset // block
    n_blocks = (n + block - 1) // block
    span_bytes = n_blocks * record  # an upper bound: the last block may be shorter
    start = first_block * record
    d0 = carray(_bytes_at(s0 + start), span_bytes if ns > 0 else 0)
    d1 = carray(_bytes_at(s1 + start), span_bytes if ns > 1 else 0)
    d2 = carray(_bytes_at(s2 + start), span_bytes if ns > 2 else 0)
    d3 = carray(_bytes_at(s3 + start), span_bytes if ns > 3 else 0)
    p_ = carray(_param_at(variant, p), n)
    g_ = carray(_grad_at(variant, g), n)
    x_ = carray(_master_at(variant, x), n if master else 0)
    v_ = carray(_param_at(variant, v), n if average else 0)
    scratch = np.empty((MAX_SLOTS, block), dtype=np.float32)
    for b in range(n_blocks):
        lo = b * block
        base = b * record
        f0 = carray(_floats_at(s0 + start + base), 1 if ns > 0 else 0)
        f1 = carray(_floats_at(s1 + start + base), 1 if ns > 1 else 0)
        f2 = carray(_floats_at(s2 + start + base), 1 if ns > 2 else 0)
        f3 = carray(_floats_at(s3 + start + base), 1 if ns > 3 else 0)
        _block(variant, p_, g_, d0, d1, d2, d3, f0, f1, f2, f3, x_, v_, h, ema, scale_, limit_,
               key, lo, offset + lo, min(block, n - lo), base, scratch)


@functools.lru_cache(maxsize=None)
def span_function(variant, n_scalars: int):
    """:func:`_qspan` for a quantized ``variant``, compiled as a C function for the shared
    table walk (fusedopt/backends/cpu/loop.py's ``run(..., spans=span_function)``)."""
    from numba import cfunc
    function = cfunc(span_signature(variant, n_scalars), cache=JIT_OPTIONS["cache"],
                     error_model="numpy")(_qspan)
    _SPAN_FUNCTIONS.append(function)
    return function
