"""Stochastic rounding as NumPy (or CuPy) uint32 array expressions: the unfused backend's
twin of kernels/storage.cuh + kernels/random_bits.cuh (fusedopt/backends/cpu/ has the Numba one).

The same words as the fused backends, from the same keys: a tensor's stream ((seed << 32)
| param position), its 1-based step, each element's index and the array stored to (0 the
param, 1 + k state slot k); see kernels/random_bits.cuh for the hash.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint32(0x9E3779B9)
_M1, _M2 = np.uint32(0x21F0AAAD), np.uint32(0x735A2D97)
_U = np.uint32


def mix(x):
    """The 32-bit mix, elementwise on a uint32 array (or a NumPy uint32 scalar)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> _U(16))
        x = x * _M1
        x = x ^ (x >> _U(15))
        x = x * _M2
        return x ^ (x >> _U(15))


def stream_base(stream: int, step: int) -> np.uint32:
    """The key of a tensor at a step: stream = (seed << 32) | position, as int64 bits."""
    stream = int(stream) & 0xFFFFFFFFFFFFFFFF
    seed, position = _U(stream >> 32), _U(stream & 0xFFFFFFFF)
    return mix(mix(mix(seed ^ GOLDEN) ^ _U(int(step) & 0xFFFFFFFF)) ^ position)


def element_hashes(xp, base, n: int):
    """mix(mix(base ^ (i >> 32)) ^ (i & 0xffffffff)) for i in range(n), uint32."""
    i = xp.arange(n, dtype=xp.uint64)
    hi = (i >> np.uint64(32)).astype(xp.uint32)
    lo = (i & np.uint64(0xFFFFFFFF)).astype(xp.uint32)
    return mix(mix(_U(base) ^ hi) ^ lo)


def array_bits(element, array: int):
    """The 32 random bits of ``array`` (0 the param: the element's hash itself; 1 + k
    state slot k)."""
    if array == 0:
        return element
    return mix(element ^ _U(array * int(GOLDEN) & 0xFFFFFFFF))


def round_stochastic(xp, x, dtype, bits):
    """float32 array ``x`` rounded stochastically to the 16-bit ``dtype`` with ``bits``
    (uint32, one per element); float32 and float64 ``dtype`` are exact casts."""
    dtype = np.dtype(dtype)
    if dtype.itemsize != 2:
        return x.astype(dtype)
    x = xp.ascontiguousarray(x, dtype=np.float32)
    if dtype.name == "bfloat16":
        return _bf16(xp, x, bits).view(dtype)
    return _f16(xp, x, bits).view(dtype)


def _bf16(xp, x, bits):
    u = x.view(np.uint32)
    with np.errstate(over="ignore"):
        rounded = ((u + (bits >> _U(16))) >> _U(16)).astype(np.uint16)
    special = (u & _U(0x7FFFFFFF)) >= _U(0x7F800000)
    with np.errstate(invalid="ignore"):
        nearest = x.astype(_bf16_dtype()).view(np.uint16)  # inf kept, NaN quiet
    return xp.where(special, nearest, rounded)


def _f16(xp, x, bits):
    u = x.view(np.uint32)
    sign = (u >> _U(16)) & _U(0x8000)
    a = u & _U(0x7FFFFFFF)
    e = a >> _U(23)
    normal = a >= _U(0x38800000)
    with np.errstate(over="ignore"):
        src = xp.where(normal, a - _U(0x38000000),
                       (a & _U(0x7FFFFF)) | xp.where(e != 0, _U(0x800000), _U(0)))
        shift = xp.where(normal, _U(13), xp.where(e != 0, _U(126) - e, _U(125)))
    big = shift > _U(31)
    extra = xp.where(big, xp.minimum(shift - _U(31), _U(31)), _U(0))  # wrapped: unused
    s = xp.where(big, _U(31), shift)
    src = src >> extra
    kept = src >> s
    lost = src & ((_U(1) << s) - _U(1))
    up = (lost + (bits >> (_U(32) - s))) >> s
    rounded = sign | (kept + up)
    out = xp.where(a >= _U(0x47800000), sign | _U(0x7C00), rounded)
    with np.errstate(invalid="ignore", over="ignore"):
        nan = x.astype(np.float16).view(np.uint16).astype(np.uint32)
    out = xp.where(a > _U(0x7F800000), nan, out)
    return out.astype(np.uint16)


def _bf16_dtype():
    import ml_dtypes
    return ml_dtypes.bfloat16
