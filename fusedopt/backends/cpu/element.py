"""One element's trip through the CPU loop: widen what is loaded, clamp the grad, call the
variant's rule, round what is stored (every mode's way of keeping the param), and the
bfloat16 pairs taken two to a 32-bit word."""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import (
    intrinsic,
    overload,
)

from ...constants import KAHAN, MASTER, REMAINDER, STOCHASTIC
from . import random_bits, storage
from .variant import _RULES, WITH_SLOT, loop_dtypes

# --- one element -----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _param_io(mode: int, code: int):
    """(get, put) of the param in ``mode``, on stored values: ``get(pv, xv)`` the compute
    value of the stored param ``pv`` and master-slot element ``xv``; ``put(value, e, xv)``
    the new ``(param, master-slot)`` elements for the compute value ``value`` (``e``: the
    element's hash, used by STOCHASTIC only; ``xv`` comes back where there is no slot)."""
    load, store_even = storage.load(code), storage.store(code)
    store_away = storage.store(code, storage.NEAREST_AWAY)
    store_random, param_bits = storage.store_stochastic(code), random_bits.ARRAY_BITS[0]
    split, rebuild = storage.split_master, storage.rebuild_master
    if mode == MASTER:
        def get(pv, xv):
            return xv

        def put(value, e, xv):
            return store_away(value), np.float32(value)
    elif mode == REMAINDER:
        def get(pv, xv):
            return rebuild(pv, xv)

        def put(value, e, xv):
            return split(np.float32(value))
    elif mode == KAHAN:
        def get(pv, xv):
            return load(pv) + load(xv)

        def put(value, e, xv):
            rounded = store_even(value)
            return rounded, store_even(value - load(rounded))  # exact in float32, rounded
    elif mode == STOCHASTIC:
        def get(pv, xv):
            return load(pv)

        def put(value, e, xv):
            return store_random(value, param_bits(e)), xv
    else:
        def get(pv, xv):
            return load(pv)

        def put(value, e, xv):
            return store_even(value), xv
    options = dict(error_model="numpy")
    return njit(**options)(get), njit(**options)(put)


def pairs(variant) -> bool:
    """Whether ``variant`` (a VariantType) loads and stores only bfloat16 elements, so that
    its loop can take them two at a time as 32-bit words (:func:`_element`). Not float16:
    its conversions, not its loads, set the pace (pairing measured no faster at 1M
    elements), and two of them per word tripled the loop's compile time."""
    pcode, gcode, scode = variant.codes
    return (pcode == gcode == storage.BF16 and (variant.n_slots == 0 or scode == storage.BF16)
            and variant.mode != MASTER and not variant.average)


@functools.lru_cache(maxsize=None)
def _element(variant):
    """One element's step for ``variant`` (a VariantType), jitted, for the overloads
    below: stored values in (param, grad, four state slots, master slot, average), stored
    values out (param, slots, master slot, average). Its rule, flags and storage functions
    are free variables, constants to Numba, so everything inlines and LLVM folds the
    branches on them; a slot the variant has not comes back as it went in.

    The average (``use_ema``) is updated from the param as stored, as Keras updates it from
    the variable after the step: ``momentum * average + (1 - momentum) * param`` with
    Keras' order of operations, in the compute type, rounded once to the param's dtype
    (to nearest even, whatever the param's own rounding)."""
    rule, ns = _RULES[variant.rule], variant.n_slots
    pcode, gcode, scode = variant.codes
    clamps, average = variant.clamps, variant.average
    get_p, put_p = _param_io(variant.mode, pcode)
    load_p, store_p = storage.load(pcode), storage.store(pcode)
    load_g, load_s = storage.load(gcode), storage.load(scode)
    random = variant.mode == STOCHASTIC
    store_s, store_r = storage.store(scode), storage.store_stochastic(scode)
    bits0, bits1, bits2, bits3 = random_bits.ARRAY_BITS[1:]
    element_hash = random_bits.element_hash
    zero = np.float64(0.0) if pcode == storage.F64 else np.float32(0.0)

    @njit(error_model="numpy")
    def one(pv, gv, av, bv, cv, dv, xv, vv, h, ema, scale, limit, key, index):
        # Clipping and a loss scale's 1/s: exact no-ops at scale 1 and limit +inf, so every
        # tensor of a clamping variant takes this one path. clamp(gi, -limit, limit) with
        # NaN kept, as x86's MAXPS and MINPS are (each returns its second operand when
        # either is NaN): two vector instructions, and the multiply.
        low = -limit
        scaled = load_g(gv) * scale if clamps else load_g(gv)
        above = (low if low > scaled else scaled) if clamps else scaled
        gi = (limit if limit < above else above) if clamps else above
        a0 = load_s(av) if ns > 0 else zero
        b0 = load_s(bv) if ns > 1 else zero
        c0 = load_s(cv) if ns > 2 else zero
        d0 = load_s(dv) if ns > 3 else zero
        pi, a, b, c, d = rule(get_p(pv, xv), gi, a0, b0, c0, d0, zero, h)
        e = element_hash(key, index)  # unused (and dropped) unless STOCHASTIC
        p_new, x_new = put_p(pi, e, xv)
        a_new = (store_r(a, bits0(e)) if random else store_s(a)) if ns > 0 else av
        b_new = (store_r(b, bits1(e)) if random else store_s(b)) if ns > 1 else bv
        c_new = (store_r(c, bits2(e)) if random else store_s(c)) if ns > 2 else cv
        d_new = (store_r(d, bits3(e)) if random else store_s(d)) if ns > 3 else dv
        v_new = store_p(ema[0] * load_p(vv) + ema[1] * load_p(p_new)) if average else vv
        return p_new, a_new, b_new, c_new, d_new, x_new, v_new

    return one


def _half_of(dtype):
    """The jitted ``half(word, k)``: half ``k`` (0 low, 1 high) of a uint32 word as an
    element of ``dtype`` (uint16 or int16)."""
    return _signed_half if np.dtype(dtype) == np.int16 else _unsigned_half


def _half_ir(signed: bool):
    @intrinsic
    def half(typingctx, word, k):
        if word != types.uint32 or not isinstance(k, types.IntegerLiteral):
            return None
        high = k.literal_value == 1

        def codegen(context, builder, signature, args):
            w = builder.lshr(args[0], _WORD_HALF) if high else args[0]
            return builder.trunc(w, ir.IntType(16))
        return (types.int16 if signed else types.uint16)(word, k), codegen
    return half


_WORD_HALF = ir.Constant(ir.IntType(32), 16)
_unsigned_half, _signed_half = _half_ir(False), _half_ir(True)


@intrinsic
def _word(typingctx, low, high):
    """The uint32 word of two 16-bit elements (``low`` first in memory)."""
    if not all(isinstance(a, types.Integer) and a.bitwidth == 16 for a in (low, high)):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        return builder.or_(builder.zext(args[0], i32),
                           builder.shl(builder.zext(args[1], i32), _WORD_HALF))
    return types.uint32(low, high), codegen


def _apply(variant, i, p, g, s0, s1, s2, s3, x, v, h, ema, scale, limit, key, offset):
    """Element ``i`` through the variant (resolved when the loop is compiled), its grad
    clamp(g * scale, -limit, limit); ``key`` and ``offset`` + i key its random bits."""


@overload(_apply)
def _apply_variant(variant, i, p, g, s0, s1, s2, s3, x, v, h, ema, scale, limit, key,
                   offset):
    one, ns, master = _element(variant), variant.n_slots, variant.mode in WITH_SLOT
    average = variant.average
    p_dtype, _, s_dtype, x_dtype, _ = loop_dtypes(variant.codes, variant.mode)
    s_none, x_none, v_none = s_dtype(0), x_dtype(0), p_dtype(0)  # what an absent slot holds

    def body(variant, i, p, g, s0, s1, s2, s3, x, v, h, ema, scale, limit, key, offset):
        new = one(p[i], g[i], s0[i] if ns > 0 else s_none, s1[i] if ns > 1 else s_none,
                  s2[i] if ns > 2 else s_none, s3[i] if ns > 3 else s_none,
                  x[i] if master else x_none,
                  v[i] if average else v_none, h, ema, scale, limit, key, offset + i)
        p[i] = new[0]
        if ns > 0:
            s0[i] = new[1]
        if ns > 1:
            s1[i] = new[2]
        if ns > 2:
            s2[i] = new[3]
        if ns > 3:
            s3[i] = new[4]
        if master:
            x[i] = new[5]
        if average:
            v[i] = new[6]
    return body


def _apply_pair(variant, i, p, g, s0, s1, s2, s3, x, h, ema, scale, limit, key, offset):
    """Elements 2i and 2i + 1 through a :func:`pairs` variant, the operands as pointers to
    32-bit words (each element's 16 bits a half of a word, the lower address the low
    half); a no-op for other variants.

    Taken two to a word, the elements reach LLVM's vector code as whole words: a shift
    and a mask widen the two halves, an or joins them, where one element at a time needs
    a lane-widening load and a narrowing store, instructions of the one shuffle port (bf16
    Adam with bf16 state: 114 instructions per 32 elements against 131, a quarter fewer on
    that port). The step itself is the same function, so the bits are the same."""


# Inlined by Numba (unlike _apply): compiled as a function of its own, it gave a vector loop
# that widens the halves with lane-widening loads and narrowing stores again, the shuffle
# port's instructions the pairs are there to avoid (tests/test_cpu_loop_code.py). Inlining
# it costs little: both elements call the one compiled ``one``.
@overload(_apply_pair, inline="always")
def _apply_pair_variant(variant, i, p, g, s0, s1, s2, s3, x, h, ema, scale, limit, key,
                        offset):
    if not pairs(variant):  # typed, never run: the span function takes them one at a time
        def unpaired(variant, i, p, g, s0, s1, s2, s3, x, h, ema, scale, limit, key,
                     offset):
            pass
        return unpaired
    one, ns, master = _element(variant), variant.n_slots, variant.mode in WITH_SLOT
    p_dtype, g_dtype, s_dtype, x_dtype, _ = loop_dtypes(variant.codes, variant.mode)
    p_half, g_half, s_half, x_half = (_half_of(d) for d in (p_dtype, g_dtype, s_dtype,
                                                             x_dtype))
    none, none16 = np.uint32(0), p_dtype(0)  # no average: pairs() excludes it

    def body(variant, i, p, g, s0, s1, s2, s3, x, h, ema, scale, limit, key, offset):
        wp, wg = p[i], g[i]
        wa = s0[i] if ns > 0 else none
        wb = s1[i] if ns > 1 else none
        wc = s2[i] if ns > 2 else none
        wd = s3[i] if ns > 3 else none
        wx = x[i] if master else none
        index = offset + 2 * i
        p0, a0, b0, c0, d0, x0, _ = one(p_half(wp, 0), g_half(wg, 0), s_half(wa, 0),
                                        s_half(wb, 0), s_half(wc, 0), s_half(wd, 0),
                                        x_half(wx, 0), none16, h, ema, scale, limit, key,
                                        index)
        p1, a1, b1, c1, d1, x1, _ = one(p_half(wp, 1), g_half(wg, 1), s_half(wa, 1),
                                        s_half(wb, 1), s_half(wc, 1), s_half(wd, 1),
                                        x_half(wx, 1), none16, h, ema, scale, limit, key,
                                        index + 1)
        p[i] = _word(p0, p1)
        if ns > 0:
            s0[i] = _word(a0, a1)
        if ns > 1:
            s1[i] = _word(b0, b1)
        if ns > 2:
            s2[i] = _word(c0, c1)
        if ns > 3:
            s3[i] = _word(d0, d1)
        if master:
            x[i] = _word(x0, x1)
    return body


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s element type."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen
