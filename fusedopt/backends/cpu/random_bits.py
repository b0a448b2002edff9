"""Counter-based random bits for stochastic rounding on the CPU: kernels/random_bits.cuh,
word for word.

    mix(x)    = x ^= x >> 16; x *= 0x21f0aaad; x ^= x >> 15; x *= 0x735a2d97; x ^= x >> 15
    base      = mix(mix(mix(seed ^ 0x9e3779b9) ^ step) ^ position)     per tensor and step
    element   = mix(mix(base ^ (i >> 32)) ^ (i & 0xffffffff))           per element
    bits(0)   = element;  bits(a) = mix(element ^ (a * 0x9e3779b9))    a: 0 param, 1 + k slot k

Written as LLVM IR on 32-bit words, as the bfloat16 helpers are (Numba would widen uint32
arithmetic to 64-bit vector lanes). ``span_key`` is ``mix(base ^ (i >> 32))``, the same for
every element of a span that does not cross a multiple of 2^32 (the loop splits spans
there), so the loop computes it once per span.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from ...constants import MAX_SLOTS

GOLDEN = 0x9E3779B9
_I32 = ir.IntType(32)


def _c(value):
    return ir.Constant(_I32, value)


def mix_ir(builder, x):
    """The 32-bit mix of kernels/random_bits.cuh on an i32 value."""
    x = builder.xor(x, builder.lshr(x, _c(16)))
    x = builder.mul(x, _c(0x21F0AAAD))
    x = builder.xor(x, builder.lshr(x, _c(15)))
    x = builder.mul(x, _c(0x735A2D97))
    return builder.xor(x, builder.lshr(x, _c(15)))


def _low(builder, value, typ):
    """An integer argument's low 32 bits as i32."""
    if typ.bitwidth > 32:
        return builder.trunc(value, _I32)
    if typ.bitwidth < 32:
        return builder.zext(value, _I32)
    return value


def _high(builder, value, typ):
    """An int64 argument's high 32 bits as i32."""
    return builder.trunc(builder.lshr(value, ir.Constant(value.type, 32)), _I32)


@intrinsic
def stream_base(typingctx, stream, step):
    """The key of a tensor at a step: its table stream ((seed << 32) | position) and the
    1-based step, both int64."""
    if not all(isinstance(a, types.Integer) and a.bitwidth == 64 for a in (stream, step)):
        return None

    def codegen(context, builder, signature, args):
        seed = _high(builder, args[0], signature.args[0])
        position = _low(builder, args[0], signature.args[0])
        step32 = _low(builder, args[1], signature.args[1])
        h = mix_ir(builder, builder.xor(seed, _c(GOLDEN)))
        h = mix_ir(builder, builder.xor(h, step32))
        return mix_ir(builder, builder.xor(h, position))
    return types.uint32(stream, step), codegen


@intrinsic
def span_key(typingctx, base, index):
    """mix(base ^ (index >> 32)): the first half of every element hash of a span."""
    if base != types.uint32 or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return mix_ir(builder, builder.xor(args[0], _high(builder, args[1], signature.args[1])))
    return types.uint32(base, index), codegen


@intrinsic
def element_hash(typingctx, key, index):
    """mix(key ^ (index & 0xffffffff)), ``key`` the span's :func:`span_key`."""
    if key != types.uint32 or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return mix_ir(builder, builder.xor(args[0], _low(builder, args[1], signature.args[1])))
    return types.uint32(key, index), codegen


def _array_bits(array: int):
    salt = (array * GOLDEN) & 0xFFFFFFFF

    @intrinsic
    def array_bits(typingctx, element):
        if element != types.uint32:
            return None

        def codegen(context, builder, signature, args):
            if array == 0:
                return args[0]
            return mix_ir(builder, builder.xor(args[0], _c(salt)))
        return types.uint32(element), codegen
    return array_bits


#: array_bits[a](element): the 32 random bits of array a (0 the param, 1 + k state slot k).
ARRAY_BITS = tuple(_array_bits(a) for a in range(1 + MAX_SLOTS))
