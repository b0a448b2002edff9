"""Storage types on the CPU: widen on load, round on store, in one place.

The twin of kernels/storage.cuh, operation for operation. Numba has no bfloat16 and no
usable float16, so 16-bit arrays reach the loop as uint16 and these helpers do the bit
work with integer operations (which LLVM vectorizes); the bfloat16 ones are written as LLVM
IR, 32 bits wide, since Numba would widen uint32 arithmetic to 64-bit vector lanes. float16
goes through LLVM's half conversions where the CPU has them (:data:`NATIVE_F16`), else
through an integer emulation with the same bits. The generic loop
(fusedopt/backends/cpu/loop.py) calls :func:`load` for every element it reads and :func:`store`
for every element it writes: the rounding policy of every narrowing store lives here.

Rounding, with NaN kept NaN as ml_dtypes and NumPy do: ``NEAREST_EVEN`` for every
ordinary store; ``NEAREST_AWAY`` (ties away from zero) for the 16-bit copy of a master
weight, the rounding whose halves split a float32 exactly (:func:`split_master`);
stochastic (:func:`store_stochastic`, 32 random bits per store from
fusedopt/backends/cpu/random_bits.py): up or down with probability proportional to the distance,
past the largest finite value towards inf, as kernels/storage.cuh documents.

Storage codes (compile-time constants of a loop specialization): ``F32``, ``F64``, ``BF16``,
``F16``, and ``Q8``, ``Q4``, ``Q8D``, ``Q4P``, ``Q8B`` for quantized state (its own span function);
``CODES`` maps dtype names to them.
"""

from __future__ import annotations

import os
import platform

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core.extending import intrinsic

F32, F64, BF16, F16, Q8, Q4, Q8D, Q4P, Q8B = 0, 1, 2, 3, 4, 5, 6, 7, 8

#: dtype name -> storage code (quantized state, fusedopt/backends/cpu/quantized.py: q8 and
#: q4-power with the power map, q4 and q8-dynamic with the dynamic map, q8-bitsandbytes with
#: the dynamic map rounded as bitsandbytes rounds).
CODES = {"float32": F32, "float64": F64, "bfloat16": BF16, "float16": F16, "q8": Q8, "q4": Q4,
         "q8-dynamic": Q8D, "q4-power": Q4P, "q8-bitsandbytes": Q8B}

#: Storage codes of quantized state.
QUANTIZED = (Q8, Q4, Q8D, Q4P, Q8B)

#: storage code -> the dtype the loop sees the array as (16-bit types as their bits).
LOOP_DTYPES = {F32: np.float32, F64: np.float64, BF16: np.uint16, F16: np.uint16,
               Q8: np.uint8, Q4: np.uint8, Q8D: np.uint8, Q4P: np.uint8,
               Q8B: np.uint8}

NEAREST_EVEN, NEAREST_AWAY = 0, 1

_RULE = {"inline": "always", "error_model": "numpy"}

_U = np.uint32  # every constant below is a uint32, so the arithmetic stays 32 bits wide
_SIGN16 = _U(0x8000)
_ABS, _INF = _U(0x7FFFFFFF), _U(0x7F800000)
_ONE, _ZERO = _U(1), _U(0)
_S16, _S13, _S23, _S10, _S31 = _U(16), _U(13), _U(23), _U(10), _U(31)
_F16_EXP, _F16_MANT, _F16_INF = _U(0x1F), _U(0x3FF), _U(0x7C00)
_F16_REBIAS, _F16_OVERFLOW = _U(112), _U(0x477FF000)  # 127 - 15; 65520.0
_F16_BEYOND = _U(0x47800000)  # 65536.0: stochastic rounding's inf
_F16_MIN_NORMAL, _F16_NORMAL_SHIFT = _U(0x38800000), _U(0x38000000)  # 2^-14; 112 << 23
_MANT, _IMPLICIT = _U(0x7FFFFF), _U(0x800000)
_SUB_BIAS, _SUB_ZERO = _U(126), _U(125)
_S32 = _U(32)
_TWO_POW_M24 = np.float32(2.0 ** -24)


@intrinsic
def float_bits(typingctx, x):
    """The bits of float32 ``x`` as a uint32."""
    if x != types.float32:
        return None
    sig = types.uint32(x)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))
    return sig, codegen


@intrinsic
def bits_float(typingctx, u):
    """The float32 whose bits are the low 32 bits of integer ``u``.

    Numba widens unsigned arithmetic to 64 bits; the truncation here lets LLVM narrow the
    whole computation back to 32-bit lanes (only the low bits are ever used)."""
    if not isinstance(u, types.Integer):
        return None
    sig = types.float32(u)

    def codegen(context, builder, signature, args):
        value = args[0]
        i32 = context.get_value_type(types.uint32)
        if signature.args[0].bitwidth > 32:
            value = builder.trunc(value, i32)
        elif signature.args[0].bitwidth < 32:
            value = builder.zext(value, i32)
        return builder.bitcast(value, context.get_value_type(types.float32))
    return sig, codegen


# --- bfloat16: written as LLVM IR, so every operation is 32 bits wide ---------------------
# (Numba would widen uint32 arithmetic to 64 bits, halving the vector lanes of the loops.)

def _i32(value):
    return ir.Constant(ir.IntType(32), value)


def _bf16_round_ir(builder, u, away: bool):
    """uint32 float bits -> uint32 bfloat16 bits: ``(u + bias) >> 16``, NaN kept NaN."""
    if away:
        bias = _i32(0x8000)
    else:
        bias = builder.add(_i32(0x7FFF), builder.and_(builder.lshr(u, _i32(16)), _i32(1)))
    rounded = builder.lshr(builder.add(u, bias), _i32(16))
    nan = builder.or_(builder.and_(builder.lshr(u, _i32(16)), _i32(0x8000)), _i32(0x7FC0))
    return builder.select(_is_nan(builder, u), nan, rounded)


def _is_nan(builder, u):
    """Whether the float32 with bits ``u`` is a NaN: one unordered compare of the float
    with itself (a vector compare into a mask register), rather than ``|u| > inf``'s mask
    and integer compare."""
    x = builder.bitcast(u, ir.FloatType())
    return builder.fcmp_unordered("uno", x, x)


@intrinsic
def bf16_widen(typingctx, h):
    """bfloat16 bits (uint16) -> float32: the bits shifted into the high half."""
    if not isinstance(h, types.Integer) or h.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        u = builder.shl(builder.zext(args[0], ir.IntType(32)), _i32(16))
        return builder.bitcast(u, ir.FloatType())
    return types.float32(h), codegen


# --- float16 ----------------------------------------------------------------------------

@njit(**_RULE)
def f16_widen(h):
    h = _U(h)
    sign = (h & _SIGN16) << _S16
    e = (h >> _S10) & _F16_EXP
    m = h & _F16_MANT
    special = _INF | (m << _S13)
    normal = ((e + _F16_REBIAS) << _S23) | (m << _S13)
    small = float_bits(np.float32(m) * _TWO_POW_M24)  # zero or subnormal, exact
    bits = special if e == _F16_EXP else (normal if e != _ZERO else small)
    return bits_float(sign | bits)


@njit(**_RULE)
def f16_round(x, rounding):
    """float32 ``x`` -> float16 bits (uint16), as kernels/storage.cuh's f16_round."""
    u = float_bits(x)
    sign = (u >> _S16) & _SIGN16
    a = u & _ABS
    payload = (a >> _S13) & _F16_MANT
    nan = sign | _F16_INF | (payload if payload != _ZERO else _ONE)
    e = a >> _S23
    normal = a >= _F16_MIN_NORMAL
    implicit = _IMPLICIT if e != _ZERO else _ZERO
    src = a - _F16_NORMAL_SHIFT if normal else (a & _MANT) | implicit
    shift = _S13 if normal else (_SUB_BIAS - e if e != _ZERO else _SUB_ZERO)
    shift = shift if shift < _S31 else _S31
    kept = src >> shift
    lost = src & ((_ONE << shift) - _ONE)
    half = _ONE << (shift - _ONE)
    if rounding == NEAREST_AWAY:
        up = lost >= half
    else:
        up = lost > half or (lost == half and (kept & _ONE) != _ZERO)
    rounded = sign | (kept + (_ONE if up else _ZERO))
    out = nan if a > _INF else (sign | _F16_INF if a >= _F16_OVERFLOW else rounded)
    return np.uint16(out)


@njit(**_RULE)
def f16_round_stochastic(x, r):
    """float32 ``x`` -> float16 bits, rounded with the random word ``r``, as
    kernels/storage.cuh's f16_round_stochastic."""
    u = float_bits(x)
    sign = (u >> _S16) & _SIGN16
    a = u & _ABS
    e = a >> _S23
    normal = a >= _F16_MIN_NORMAL
    implicit = _IMPLICIT if e != _ZERO else _ZERO
    src = a - _F16_NORMAL_SHIFT if normal else (a & _MANT) | implicit
    shift = _S13 if normal else (_SUB_BIAS - e if e != _ZERO else _SUB_ZERO)
    extra = (shift - _S31 if shift - _S31 < _S31 else _S31) if shift > _S31 else _ZERO
    sh = _S31 if shift > _S31 else shift
    src = src >> extra
    kept = src >> sh
    lost = src & ((_ONE << sh) - _ONE)
    up = (lost + (_U(r) >> (_S32 - sh))) >> sh
    rounded = sign | (kept + up)
    payload = (a >> _S13) & _F16_MANT
    nan = sign | _F16_INF | (payload if payload != _ZERO else _ONE)  # as f16_round's
    out = nan if a > _INF else (sign | _F16_INF if a >= _F16_BEYOND else rounded)
    return np.uint16(out)


# --- float16 through the CPU's own conversions ---------------------------------------------
# LLVM's half type: ``fpext`` and ``fptrunc`` (IEEE, to nearest even), one instruction per
# vector where the CPU converts float16 (x86's F16C, every AArch64 CPU). The results are the
# emulation's bits above for every non-NaN value (tests/test_storage_helpers.py checks both
# against ml_dtypes); NaN stays NaN of its sign. Their loops also compile in about half the
# time of the integer emulation's, which Numba inlines operation by operation.

@intrinsic
def f16_widen_native(typingctx, h):
    """float16 bits (a 16-bit integer) -> float32, by ``fpext``."""
    if not isinstance(h, types.Integer) or h.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(h), codegen


def _host_converts_f16() -> bool:
    """Whether this CPU converts float16 in hardware (else LLVM would call a runtime
    function that the JIT may not find). ``FUSEDOPT_F16_EMULATED=1`` forces the emulation."""
    if os.environ.get("FUSEDOPT_F16_EMULATED", "") not in ("", "0"):
        return False
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    try:
        return bool(binding.get_host_cpu_features().get("f16c", False))
    except Exception:  # noqa: BLE001 - no feature list: take the portable path
        return False


#: Whether the loops use the CPU's float16 conversions (:func:`f16_widen_native`).
NATIVE_F16 = _host_converts_f16()


# --- the load/store pair every loop uses --------------------------------------------------
# Chosen per storage code when a loop is specialized (the codes are compile-time constants),
# so each specialization calls exactly one widening and one rounding function. Where the
# operation is a few LLVM instructions it is an intrinsic, emitted straight into the loop:
# Numba inlines an ``inline="always"`` function by recompiling its IR at every call, which
# was most of a bfloat16 loop's compile time.

def _storing(emit, *, to_float32: bool = True, random: bool = False):
    """An intrinsic ``f(x)`` (``f(x, r)`` with ``random``, ``r`` 32 random bits): ``x``
    converted to float32 (the same rounding as ``np.float32(x)``) unless ``to_float32`` is
    False, then ``emit(builder, value[, r])``; ``emit`` None returns the value itself."""
    def typed(x, r=None):
        if not isinstance(x, types.Float) or (random and r != types.uint32):
            return None
        out = types.uint16 if emit is not None else (types.float32 if to_float32 else x)

        def codegen(context, builder, signature, args):
            value = context.cast(builder, args[0], x, types.float32) if to_float32 else args[0]
            return value if emit is None else emit(builder, value, *args[1:])
        return (out(x, r) if random else out(x)), codegen

    if random:
        @intrinsic
        def store_random(typingctx, x, r):
            return typed(x, r)
        return store_random

    @intrinsic
    def store(typingctx, x):
        return typed(x)
    return store


def _bf16_bits(away: bool):
    """float32 -> bfloat16 bits, to nearest (even, or ties away from zero); see
    kernels/storage.cuh for the carry."""
    def emit(builder, value):
        u = builder.bitcast(value, ir.IntType(32))
        return builder.trunc(_bf16_round_ir(builder, u, away), ir.IntType(16))
    return emit


def _bf16_stochastic_bits(builder, value, r):
    """float32 -> bfloat16 bits, rounded with the random word ``r``: the top 16 bits of r
    added to the value's bits carry into the kept half with probability (dropped bits) /
    2^16; inf and NaN as round to nearest. (An inf needs no case of its own: its dropped bits
    are zero, so no carry can reach the kept half and the sum keeps inf's bits.)"""
    u = builder.bitcast(value, ir.IntType(32))
    rounded = builder.lshr(builder.add(u, builder.lshr(r, _i32(16))), _i32(16))
    nan = builder.or_(builder.and_(builder.lshr(u, _i32(16)), _i32(0x8000)), _i32(0x7FC0))
    return builder.trunc(builder.select(_is_nan(builder, u), nan, rounded), ir.IntType(16))


def _f16_bits_native(builder, value):
    """float32 -> float16 bits by ``fptrunc``: IEEE, to nearest even."""
    return builder.bitcast(builder.fptrunc(value, ir.HalfType()), ir.IntType(16))


_same = _storing(None, to_float32=False)  # float32 and float64 loads, float64 stores
_to_float32 = _storing(None)
_bf16_even, _bf16_away = _storing(_bf16_bits(False)), _storing(_bf16_bits(True))
_f16_even_native = _storing(_f16_bits_native)


@njit(**_RULE)
def _f16_even(x):
    return f16_round(np.float32(x), NEAREST_EVEN)


@njit(**_RULE)
def _f16_away(x):
    return f16_round(np.float32(x), NEAREST_AWAY)


_LOADS = {F32: _same, F64: _same, BF16: bf16_widen,
          F16: f16_widen_native if NATIVE_F16 else f16_widen}
_STORES = {(F32, NEAREST_EVEN): _to_float32, (F32, NEAREST_AWAY): _to_float32,
           (F64, NEAREST_EVEN): _same, (F64, NEAREST_AWAY): _same,
           (BF16, NEAREST_EVEN): _bf16_even, (BF16, NEAREST_AWAY): _bf16_away,
           (F16, NEAREST_EVEN): _f16_even_native if NATIVE_F16 else _f16_even,
           (F16, NEAREST_AWAY): _f16_away}


def load(code: int):
    """The jitted widening of storage ``code``: stored element -> compute type."""
    return _LOADS[code]


def store(code: int, rounding: int = NEAREST_EVEN):
    """The jitted narrowing of storage ``code``: compute type -> stored element. The one
    rounding policy point of the CPU backend (with :func:`store_stochastic`)."""
    return _STORES[code, rounding]


_same_ignoring = _storing(None, to_float32=False, random=True)
_float32_ignoring = _storing(None, random=True)
_bf16_stochastic = _storing(_bf16_stochastic_bits, random=True)


@njit(**_RULE)
def _f16_stochastic(x, r):
    return f16_round_stochastic(np.float32(x), r)


_STOCHASTIC = {F32: _float32_ignoring, F64: _same_ignoring, BF16: _bf16_stochastic,
               F16: _f16_stochastic}


def store_stochastic(code: int):
    """The jitted stochastic narrowing of storage ``code``: (compute value, 32 random bits)
    -> stored element; exact types ignore the bits (so their hash is never computed)."""
    return _STOCHASTIC[code]


# --- remainder masters (bfloat16 params) --------------------------------------------------

@intrinsic
def _split_ir(typingctx, master):
    if master != types.float32:
        return None
    sig = types.UniTuple(types.uint16, 2)(master)

    def codegen(context, builder, signature, args):
        u = builder.bitcast(args[0], ir.IntType(32))
        hi = _bf16_round_ir(builder, u, away=True)
        low = builder.and_(builder.sub(u, builder.shl(hi, _i32(16))), _i32(0xFFFF))
        is_nan = _is_nan(builder, u)
        hi = builder.select(is_nan, builder.or_(builder.lshr(u, _i32(16)), _i32(0x40)), hi)
        low = builder.select(is_nan, _i32(0), low)
        i16 = ir.IntType(16)
        return context.make_tuple(builder, signature.return_type,
                                  [builder.trunc(hi, i16), builder.trunc(low, i16)])
    return sig, codegen


@intrinsic
def _rebuild_ir(typingctx, hi, remainder):
    if not all(isinstance(a, types.Integer) and a.bitwidth == 16 for a in (hi, remainder)):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        u = builder.add(builder.shl(builder.zext(args[0], i32), _i32(16)),
                        builder.sext(args[1], i32))
        return builder.bitcast(u, ir.FloatType())
    return types.float32(hi, remainder), codegen


@njit(**_RULE)
def split_master(master):
    """float32 master -> (bf16 bits, int16 remainder) with rebuild_master(...) == master
    bit for bit (NaN: a NaN param, payload not kept); see kernels/storage.cuh."""
    hi, low = _split_ir(master)
    return hi, np.int16(low)


@njit(**_RULE)
def rebuild_master(hi, remainder):
    """The float32 master from its bf16 bits and int16 remainder: (hi << 16) + r."""
    return _rebuild_ir(hi, remainder)
