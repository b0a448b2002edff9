"""The CPU span of quantized state (``state_dtype="q8"``/``"q4"``): one pass per block.

The table walk (fusedopt/backends/cpu/loop.py) hands a span of one tensor to this function
as it hands a span to the float one, with the slots' base addresses (their blocks are
found from the element index, fusedopt/memory/quant.py) and the span's first element
index, always the first of a block (the CPU backend's chunks are whole blocks). For each
block of the span:

1. read each slot's absmax and decode its codes (``map[code] * absmax``; the codes'
   functions are fusedopt/backends/cpu/codes.py's): a table map's into a block-sized
   scratch in a loop of its own, the power map's in the rule's loop;
2. run the rule through the param's mode exactly as the float span does
   (fusedopt/backends/cpu/element.py's param handling), store the param (and its master
   slot, its moving average), keep the new slot values in the scratch and, in the same
   loop, each slot's new absmax;
3. write each slot's new absmax and its codes: the nearest map entry to ``value / absmax``
   (ties to the upper entry), or with stochastic rounding the entry below or above with
   probability proportional to the distance, drawn from the element's random bits for
   that slot (the bits the float state of the same slot would have used).

A slot declared ``float_state`` (schedule-free's z) is float32 beside the codes: read into
the scratch in step 1 and written back in step 3 as it is, from its base address and the
element index as well.

So the state is read once and written once, and no float copy of it exists beyond the
block being stepped (4 x 256 floats per thread). Blocks of a tensor are independent, so
Numba's threads share the work items of a table as for float state.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core.extending import intrinsic, overload

from ...constants import MAX_SLOTS
from . import random_bits, storage
from ._cache import JIT_OPTIONS
from .codes import FORMAT_OF, RULE, block_functions, named
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
from .rules import inlined
from .storage import bits_float, float_bits
from .variant import _RULES, WITH_SLOT

_U = np.uint32
_ABS = np.uint32(0x7FFFFFFF)
#: How many blocks ahead of the one stepped :func:`_qspan` asks for the span's cache lines
#: (:func:`_prefetch`), and the line's bytes. A block's loads all come in its rule's loop,
#: and its encode then computes with no new lines to fetch: asked for ahead, the lines of
#: the next blocks arrive while it does (benchmarks/RESULTS.md, "(AVX-512, Zen 4)").
_AHEAD = 2
_LINE = 64


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


@intrinsic
def _prefetch(typingctx, address):
    """Ask for the cache line of the int64 ``address`` (``prefetcht0``): a hint, which
    neither faults nor changes any value."""
    sig = types.none(types.int64)

    def codegen(context, builder, signature, args):
        ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr, i32, i32, i32])
        # llvmlite names it for the pointer type as this LLVM mangles it (p0i8, or p0)
        fn = builder.module.declare_intrinsic("llvm.prefetch", [ptr], fnty)
        builder.call(fn, [builder.inttoptr(args[0], ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return sig, codegen


@njit(inline="always", **RULE)
def _prefetch_bytes(address, size):
    """:func:`_prefetch` of every line of ``size`` bytes from ``address``."""
    for offset in range(0, size, _LINE):
        _prefetch(address + offset)


@functools.lru_cache(maxsize=None)
def _element(variant):
    """One element's step on decoded slot values: (stored param, grad, four slot values in
    the compute type, master-slot element, average) -> (stored param, four new slot
    values, master-slot element, average), the param kept as its mode keeps it."""
    rule = inlined(_RULES[variant.rule])
    pcode, gcode, _ = variant.codes
    clamps, average = variant.clamps, variant.average
    get_p, put_p = _param_io(variant.mode, pcode)
    load_p, store_p = storage.load(pcode), storage.store(pcode)
    load_g = storage.load(gcode)
    element_hash = random_bits.element_hash
    zero = np.float32(0.0)

    @njit(**RULE)
    @named(variant.key)
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


def _block(variant, p, g, d0, d1, d2, d3, f0, f1, f2, f3, y0, y1, y2, y3, x, v, h, ema, scale,
           limit, key, lo, first, length, base, scratch):
    """One block of a span (resolved per variant): elements ``lo`` .. ``lo + length`` of
    the span's arrays (``first`` the index of ``lo`` in its tensor, a key of the random
    bits), its quantized slots' records at byte ``base`` of ``d0``..``d3`` and their absmax
    in ``f0``..``f3`` (one float each), its float32 slots (``Slot.float_state``) the span's
    elements in ``y0``..``y3`` (the others' are empty)."""


@overload(_block)
def _block_variant(variant, p, g, d0, d1, d2, d3, f0, f1, f2, f3, y0, y1, y2, y3, x, v, h, ema,
                   scale, limit, key, lo, first, length, base, scratch):
    decode, encode = block_functions(variant)
    one = _element(variant)
    ns, master, average = variant.n_slots, variant.mode in WITH_SLOT, variant.average
    fa, fb, fc, fd = _floats(variant)
    none = np.float32(0.0)
    inline_decode = FORMAT_OF[variant.codes[2]].map == "power"

    def body(variant, p, g, d0, d1, d2, d3, f0, f1, f2, f3, y0, y1, y2, y3, x, v, h, ema,
             scale, limit, key, lo, first, length, base, scratch):
        sa = f0[0] if ns > 0 and not fa else none
        sb = f1[0] if ns > 1 and not fb else none
        sc = f2[0] if ns > 2 and not fc else none
        sd = f3[0] if ns > 3 and not fd else none
        # Every array indexed from 0 by the loop's own counter: an index like lo + i may be
        # negative for all Numba knows, and its wraparound select per element keeps LLVM
        # from vectorizing the loop.
        q0, q1, q2, q3 = d0[base + 4:], d1[base + 4:], d2[base + 4:], d3[base + 4:]
        pb, gb = p[lo:lo + length], g[lo:lo + length]
        xb, vb = x[lo:lo + length], v[lo:lo + length]
        ya, yb, yc, yd = (y0[lo:lo + length], y1[lo:lo + length], y2[lo:lo + length],
                          y3[lo:lo + length])
        # A table map's codes are decoded first, in a loop of their own (gathers from the
        # map), so that the rule's loop reads and writes plain float32 rows, as the float
        # span does; the power map's decode is a few multiplies, done in the rule's loop.
        if not inline_decode:
            for i in range(length):
                if ns > 0:
                    scratch[0, i] = ya[i] if fa else decode(0, q0, i, sa)
                if ns > 1:
                    scratch[1, i] = yb[i] if fb else decode(1, q1, i, sb)
                if ns > 2:
                    scratch[2, i] = yc[i] if fc else decode(2, q2, i, sc)
                if ns > 3:
                    scratch[3, i] = yd[i] if fd else decode(3, q3, i, sd)
        # Each slot's absmax is taken in the same loop (:func:`_top_bits`).
        t0, t1, t2, t3 = _U(0), _U(0), _U(0), _U(0)
        for i in range(length):
            if inline_decode:
                a0 = (ya[i] if fa else decode(0, q0, i, sa)) if ns > 0 else none
                b0 = (yb[i] if fb else decode(1, q1, i, sb)) if ns > 1 else none
                c0 = (yc[i] if fc else decode(2, q2, i, sc)) if ns > 2 else none
                e0 = (yd[i] if fd else decode(3, q3, i, sd)) if ns > 3 else none
            else:
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
                t0 = t0 if fa else _top_bits(t0, np.float32(new[1]))
            if ns > 1:
                scratch[1, i] = np.float32(new[2])
                t1 = t1 if fb else _top_bits(t1, np.float32(new[2]))
            if ns > 2:
                scratch[2, i] = np.float32(new[3])
                t2 = t2 if fc else _top_bits(t2, np.float32(new[3]))
            if ns > 3:
                scratch[3, i] = np.float32(new[4])
                t3 = t3 if fd else _top_bits(t3, np.float32(new[4]))
        if ns > 0:
            if fa:
                ya[:] = scratch[0, :length]
            else:
                encode(0, d0, base, f0, scratch[0], length, bits_float(t0), key,
                       first)
        if ns > 1:
            if fb:
                yb[:] = scratch[1, :length]
            else:
                encode(1, d1, base, f1, scratch[1], length, bits_float(t1), key,
                       first)
        if ns > 2:
            if fc:
                yc[:] = scratch[2, :length]
            else:
                encode(2, d2, base, f2, scratch[2], length, bits_float(t2), key,
                       first)
        if ns > 3:
            if fd:
                yd[:] = scratch[3, :length]
            else:
                encode(3, d3, base, f3, scratch[3], length, bits_float(t3), key,
                       first)
    return body


@njit(inline="always", **RULE)
def _top_bits(top, value):
    """The larger of ``top`` and the bits of |value|: a step of a block's absmax as the
    integer maximum of its values' bits without the sign (ordered as the magnitudes, every
    NaN above inf, so a NaN makes it NaN), a reduction the vectorizer takes where a float
    maximum that keeps NaN is not; cast back to uint32 (Numba widens ``&`` to 64 bits), so
    that it runs in 32-bit lanes, 16 to a 512-bit vector."""
    bits = _U(float_bits(value) & _ABS)
    return bits if bits > top else top


@njit(inline="always", **RULE)
def _prefetch_slot(address, at, record, index, count, used, floats):
    """:func:`_prefetch_bytes` of a slot's block record at byte ``at`` of ``address``, or
    of its float32 elements from ``index`` (``Slot.float_state``); nothing if unused."""
    if used and floats:
        _prefetch_bytes(address + 4 * index, 4 * count)
    elif used:
        _prefetch_bytes(address + at, record)


def _floats(variant) -> tuple:
    """Per slot (four), whether a VariantType keeps it float32 (``Slot.float_state``)."""
    signed = variant.signed + (True,) * (MAX_SLOTS - len(variant.signed))
    return tuple(sign is None for sign in signed)


def _float_slots(variant):
    """:func:`_floats` as constants of jitted code."""


@overload(_float_slots, inline="always")
def _float_slots_variant(variant):
    floats = _floats(variant)

    def body(variant):
        return floats
    return body


def _format_of(variant):
    """(elements per block, bytes per block record, bytes of codes per element pair) of a
    quantized VariantType."""


@overload(_format_of, inline="always")
def _format_of_variant(variant):
    fmt = FORMAT_OF[variant.codes[2]]
    block, record = fmt.block, fmt.record

    def body(variant):
        return block, record
    return body


def _qspan(variant, p, g, s0, s1, s2, s3, x, v, n, scalars, scale, limit, key, offset):
    """``n`` elements of one tensor from element ``offset`` (the first of a block), the
    slots quantized (the signature of fusedopt/backends/cpu/loop.py's span)."""
    _prefer_wide_vectors()
    ns, master, _, _, average = _layout(variant)
    fa, fb, fc, fd = _float_slots(variant)
    h = _rule_scalars(scalars[0], variant)
    ema = _average_scalars(scalars[0], variant)
    scale_, limit_ = _in_compute_type((scale, limit), variant)
    block, record = _format_of(variant)
    first_block = offset // block
    n_blocks = (n + block - 1) // block
    span_bytes = n_blocks * record  # an upper bound: the last block may be shorter
    start = first_block * record
    d0 = carray(_bytes_at(s0 + start), span_bytes if ns > 0 and not fa else 0)
    d1 = carray(_bytes_at(s1 + start), span_bytes if ns > 1 and not fb else 0)
    d2 = carray(_bytes_at(s2 + start), span_bytes if ns > 2 and not fc else 0)
    d3 = carray(_bytes_at(s3 + start), span_bytes if ns > 3 and not fd else 0)
    # A float32 slot's address is its base too: its span starts at element ``offset``.
    y0 = carray(_floats_at(s0 + 4 * offset), n if ns > 0 and fa else 0)
    y1 = carray(_floats_at(s1 + 4 * offset), n if ns > 1 and fb else 0)
    y2 = carray(_floats_at(s2 + 4 * offset), n if ns > 2 and fc else 0)
    y3 = carray(_floats_at(s3 + 4 * offset), n if ns > 3 and fd else 0)
    p_ = carray(_param_at(variant, p), n)
    g_ = carray(_grad_at(variant, g), n)
    x_ = carray(_master_at(variant, x), n if master else 0)
    v_ = carray(_param_at(variant, v), n if average else 0)
    scratch = np.empty((MAX_SLOTS, block), dtype=np.float32)
    for b in range(n_blocks):
        lo = b * block
        base = b * record
        if b + _AHEAD < n_blocks:
            ahead = lo + _AHEAD * block
            count = min(block, n - ahead)
            _prefetch_bytes(p + ahead * p_.itemsize, count * p_.itemsize)
            _prefetch_bytes(g + ahead * g_.itemsize, count * g_.itemsize)
            if master:
                _prefetch_bytes(x + ahead * x_.itemsize, count * x_.itemsize)
            if average:
                _prefetch_bytes(v + ahead * v_.itemsize, count * v_.itemsize)
            _prefetch_slot(s0, start + base + _AHEAD * record, record, offset + ahead, count,
                           ns > 0, fa)
            _prefetch_slot(s1, start + base + _AHEAD * record, record, offset + ahead, count,
                           ns > 1, fb)
            _prefetch_slot(s2, start + base + _AHEAD * record, record, offset + ahead, count,
                           ns > 2, fc)
            _prefetch_slot(s3, start + base + _AHEAD * record, record, offset + ahead, count,
                           ns > 3, fd)
        f0 = carray(_floats_at(s0 + start + base), 1 if ns > 0 and not fa else 0)
        f1 = carray(_floats_at(s1 + start + base), 1 if ns > 1 and not fb else 0)
        f2 = carray(_floats_at(s2 + start + base), 1 if ns > 2 and not fc else 0)
        f3 = carray(_floats_at(s3 + start + base), 1 if ns > 3 and not fd else 0)
        _block(variant, p_, g_, d0, d1, d2, d3, f0, f1, f2, f3, y0, y1, y2, y3, x_, v_, h, ema,
               scale_, limit_, key, lo, offset + lo, min(block, n - lo), base, scratch)


@functools.lru_cache(maxsize=None)
def span_function(variant, n_scalars: int):
    """:func:`_qspan` for a quantized ``variant``, compiled as a C function for the shared
    table walk (fusedopt/backends/cpu/loop.py's ``run(..., spans=span_function)``)."""
    from numba import cfunc
    function = cfunc(span_signature(variant, n_scalars), cache=JIT_OPTIONS["cache"],
                     error_model="numpy")(_qspan)
    _SPAN_FUNCTIONS.append(function)
    return function
