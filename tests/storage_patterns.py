"""Bit patterns and independent expected values for the storage helpers' tests.

The widening helpers are checked on every 16-bit pattern. The rounding helpers and the
remainder split are checked on a dense, stated sample of float32 patterns: every one of the
2^16 high halves (every sign, exponent and 7 leading mantissa bits) combined with
:data:`LOW_HALVES`, the low halves where rounding decides something (zero, ties of every
cut the helpers make - bit 12 for float16 normals, bits 13-15 for the first float16
subnormal cuts, bit 15 for bfloat16 - their neighbours, the float16 overflow threshold 65520 (low half
0xF000), all ones) plus random ones. Ties
of the deeper float16 subnormal cuts (bits 16 and up) are covered by the high halves.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

BF16 = ml_dtypes.bfloat16

#: Low 16 bits combined with every high half.
BOUNDARY_LOWS = (0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2001, 0x3FFF,
                 0x4000, 0x4001, 0x7FFF, 0x8000, 0x8001, 0xBFFF, 0xC000, 0xEFFF, 0xF000,
                 0xFFFE, 0xFFFF)
RANDOM_LOWS = 14
LOW_HALVES = np.unique(np.concatenate([
    np.array(BOUNDARY_LOWS, np.uint32),
    np.random.default_rng(20240610).integers(0, 1 << 16, RANDOM_LOWS, dtype=np.uint32)]))


def all_16bit() -> np.ndarray:
    """Every 16-bit pattern, as uint16."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


def float32_sample() -> np.ndarray:
    """The dense float32 sample (as float32): every high half x :data:`LOW_HALVES`."""
    highs = np.arange(1 << 16, dtype=np.uint32) << 16
    return (highs[:, None] | LOW_HALVES[None, :]).ravel().view(np.float32)


def widened(bits: np.ndarray, dtype) -> np.ndarray:
    """16-bit ``bits`` of ``dtype`` widened by ml_dtypes/NumPy, as float32 bits."""
    return bits.view(dtype).astype(np.float32).view(np.uint32)


def nearest_even(x: np.ndarray, dtype) -> np.ndarray:
    """ml_dtypes' / NumPy's float32 -> ``dtype`` (round to nearest even), as uint16 bits."""
    with np.errstate(all="ignore"):
        return x.astype(dtype).view(np.uint16)


def nearest_away(x: np.ndarray, dtype) -> np.ndarray:
    """Round to nearest, ties away from zero, as uint16 bits, built from ml_dtypes' nearest
    even: where the value lies exactly halfway between that result and its neighbour
    farther from zero, take the neighbour. (Where nearest even overflows to inf, so does
    nearest away: its ties only ever move away from zero.)"""
    even = nearest_even(x, dtype)
    with np.errstate(all="ignore"):
        wide = x.astype(np.float64)
        back = even.view(dtype).astype(np.float64)
        finite = np.isfinite(wide) & np.isfinite(back)
        farther = (even + np.uint16(1)).view(dtype).astype(np.float64)  # one step from zero
        tie = finite & (np.abs(wide) > np.abs(back)) & (
            np.abs(wide) - np.abs(back) == np.abs(farther) - np.abs(wide))
    return np.where(tie, even + np.uint16(1), even).astype(np.uint16)


def same_bits_or_both_nan(got: np.ndarray, expected: np.ndarray, dtype) -> np.ndarray:
    """Elementwise: equal bits, or (for NaN results) both NaN with the same sign bit."""
    got_v, exp_v = got.view(dtype), expected.view(dtype)
    sign = np.uint64(1) << np.uint64(8 * got.dtype.itemsize - 1)
    same_sign = (got.astype(np.uint64) & sign) == (expected.astype(np.uint64) & sign)
    with np.errstate(all="ignore"):
        both_nan = np.isnan(got_v.astype(np.float32)) & np.isnan(exp_v.astype(np.float32))
    return (got == expected) | (both_nan & same_sign)
