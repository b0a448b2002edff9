// Storage types and the one place values change width: widen on load, round on store.
//
// A param, grad or state element is stored as float, double, __half or __nv_bfloat16 and
// the math runs in compute_t (float for the 16-bit types and float, double for double).
// Every load goes through Storage<T>::load and every store through Storage<T>::store, so
// how a value is narrowed (round to nearest even today; stochastic rounding or a
// compensated store later) is decided here and nowhere else.
//
// 16-bit values are moved as their bits (unsigned short) and converted with integer
// operations only: the exact code a GPU runs is the code the host build runs and the test
// suite checks against ml_dtypes on every 16-bit pattern and a dense sample of float32
// ones (tests/test_storage_helpers.py). No conversion intrinsic is used, and so none can
// differ between the GPU and the host. The CPU backend's twin is fusedopt/backends/cpu/storage.py.
//
// Rounding, with NaN kept NaN (as ml_dtypes and NumPy do):
//   NEAREST_EVEN  round to nearest, ties to even: every ordinary store;
//   NEAREST_AWAY  round to nearest, ties away from zero: the 16-bit copy of a master
//                 weight. On bfloat16 it is the rounding whose halves split a float32
//                 exactly (split_master below), so the remainder mode and the fp32-master
//                 mode write the same param bits.
//   stochastic    (store_stochastic) down or up to a neighbour with probability
//                 proportional to the distance to the other one, from 32 random bits
//                 (kernels/random_bits.cuh): unbiased, E[round(x)] = x. Past the largest
//                 finite value the next neighbour is inf (as if the format went on: 2^128
//                 for bfloat16, 65536 for float16), so a value between the largest finite
//                 one and that becomes inf with probability proportional to its distance
//                 from the largest; inf and NaN are kept as round-to-nearest keeps them.
//                 Probabilities below 2^-31 of a float16 ulp (values under 2^-55) round to
//                 zero.
#pragma once

#if !defined(FUSEDOPT_HOST_BUILD)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define FUSEDOPT_DEVICE __device__ __forceinline__
#endif

namespace fusedopt {

enum Rounding { NEAREST_EVEN = 0, NEAREST_AWAY = 1 };

FUSEDOPT_DEVICE unsigned int float_bits(float x) {
#if defined(FUSEDOPT_HOST_BUILD)
    unsigned int u;
    __builtin_memcpy(&u, &x, sizeof u);
    return u;
#else
    return __float_as_uint(x);
#endif
}

FUSEDOPT_DEVICE float bits_float(unsigned int u) {
#if defined(FUSEDOPT_HOST_BUILD)
    float x;
    __builtin_memcpy(&x, &u, sizeof x);
    return x;
#else
    return __uint_as_float(u);
#endif
}

// --- bfloat16: the high half of a float32 -----------------------------------------------

FUSEDOPT_DEVICE float bf16_widen(unsigned short h) { return bits_float(static_cast<unsigned int>(h) << 16); }

template <int R>
FUSEDOPT_DEVICE unsigned short bf16_round(float x) {
    const unsigned int u = float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: the quiet NaN of its sign
        return static_cast<unsigned short>(((u >> 16) & 0x8000u) | 0x7fc0u);
    }
    // Adding just under half a unit of the kept bits (plus the kept lsb for ties to even)
    // carries into them exactly when the value rounds up; a carry out of the mantissa moves
    // the exponent up, and past the largest finite value it lands on inf.
    const unsigned int bias = R == NEAREST_AWAY ? 0x8000u : 0x7fffu + ((u >> 16) & 1u);
    return static_cast<unsigned short>((u + bias) >> 16);
}

// Stochastic: the random low half added to the bits carries into the kept half with
// probability (the dropped bits) / 2^16, the distance in ulps; the sign bit rides along.
FUSEDOPT_DEVICE unsigned short bf16_round_stochastic(float x, unsigned int r) {
    const unsigned int u = float_bits(x);
    if ((u & 0x7fffffffu) >= 0x7f800000u) return bf16_round<NEAREST_EVEN>(x);  // inf, NaN
    return static_cast<unsigned short>((u + (r >> 16)) >> 16);
}

// --- float16 (IEEE binary16) ------------------------------------------------------------

FUSEDOPT_DEVICE float f16_widen(unsigned short h) {
    const unsigned int sign = (static_cast<unsigned int>(h) & 0x8000u) << 16;
    const unsigned int e = (h >> 10) & 0x1fu;
    const unsigned int m = h & 0x3ffu;
    if (e == 0x1fu) return bits_float(sign | 0x7f800000u | (m << 13));     // inf, NaN
    if (e != 0u) return bits_float(sign | ((e + 112u) << 23) | (m << 13));  // normal
    // Zero or subnormal: m * 2^-24, exact in float32 (an integer below 2^10 times a
    // power of two, and the product is a normal float32).
    return bits_float(sign | float_bits(static_cast<float>(m) * 5.9604644775390625e-8f));
}

template <int R>
FUSEDOPT_DEVICE unsigned short f16_round(float x) {
    const unsigned int u = float_bits(x);
    const unsigned int sign = (u >> 16) & 0x8000u;
    const unsigned int a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {  // NaN: NumPy's rule, the top payload bits, and never inf
        const unsigned int payload = (a >> 13) & 0x3ffu;
        return static_cast<unsigned short>(sign | 0x7c00u | (payload ? payload : 1u));
    }
    if (a >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65520
    // Below 2^-14 the result is subnormal: the value in units of 2^-24 is the mantissa
    // (with its implicit bit) shifted right by 126 - e. At and above it, rebiasing the
    // exponent leaves 13 bits to round away. Either way: shift, then round on what fell out.
    const unsigned int e = a >> 23;
    const bool normal = a >= 0x38800000u;
    const unsigned int src = normal ? a - 0x38000000u : (a & 0x7fffffu) | (e ? 0x800000u : 0u);
    unsigned int shift = normal ? 13u : (e ? 126u - e : 125u);
    shift = shift < 31u ? shift : 31u;
    const unsigned int kept = src >> shift;
    const unsigned int lost = src & ((1u << shift) - 1u);
    const unsigned int half = 1u << (shift - 1u);
    const bool up = R == NEAREST_AWAY ? lost >= half
                                      : (lost > half || (lost == half && (kept & 1u)));
    return static_cast<unsigned short>(sign | (kept + (up ? 1u : 0u)));
}

// Stochastic: as f16_round, with "up" decided by the top ``shift`` random bits added to
// the ``shift`` bits that fall out (a carry exactly when r / 2^32 >= 1 - lost / 2^shift).
// Shifts past 31 (values below 2^-24 * 2^-7) first drop what 32 random bits cannot weigh.
FUSEDOPT_DEVICE unsigned short f16_round_stochastic(float x, unsigned int r) {
    const unsigned int u = float_bits(x);
    const unsigned int sign = (u >> 16) & 0x8000u;
    const unsigned int a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return f16_round<NEAREST_EVEN>(x);                     // NaN
    if (a >= 0x47800000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65536
    const unsigned int e = a >> 23;
    const bool normal = a >= 0x38800000u;
    unsigned int src = normal ? a - 0x38000000u : (a & 0x7fffffu) | (e ? 0x800000u : 0u);
    const unsigned int shift = normal ? 13u : (e ? 126u - e : 125u);
    const unsigned int extra = shift > 31u ? (shift - 31u < 31u ? shift - 31u : 31u) : 0u;
    const unsigned int s = shift > 31u ? 31u : shift;
    src >>= extra;
    const unsigned int kept = src >> s;
    const unsigned int lost = src & ((1u << s) - 1u);
    const unsigned int up = (lost + (r >> (32u - s))) >> s;
    return static_cast<unsigned short>(sign | (kept + up));
}

// --- storage types ------------------------------------------------------------------------

// Storage<T>: the element type in memory (``bits``), the compute type, and the load/store
// pair. ``store<R>`` is the rounding policy point for every narrowing store, and
// ``store_stochastic(x, r)`` its stochastic twin (r: 32 random bits; exact types ignore
// them, so their hash is never computed).
template <typename T> struct Storage;

template <> struct Storage<float> {
    using bits = float;
    using compute = float;
    static FUSEDOPT_DEVICE float load(float x) { return x; }
    template <int R = NEAREST_EVEN>
    static FUSEDOPT_DEVICE float store(float x) { return x; }
    static FUSEDOPT_DEVICE float store_stochastic(float x, unsigned int) { return x; }
};

template <> struct Storage<double> {
    using bits = double;
    using compute = double;
    static FUSEDOPT_DEVICE double load(double x) { return x; }
    template <int R = NEAREST_EVEN>
    static FUSEDOPT_DEVICE double store(double x) { return x; }
    static FUSEDOPT_DEVICE double store_stochastic(double x, unsigned int) { return x; }
};

template <> struct Storage<__nv_bfloat16> {
    using bits = unsigned short;
    using compute = float;
    static FUSEDOPT_DEVICE float load(unsigned short h) { return bf16_widen(h); }
    template <int R = NEAREST_EVEN>
    static FUSEDOPT_DEVICE unsigned short store(float x) { return bf16_round<R>(x); }
    static FUSEDOPT_DEVICE unsigned short store_stochastic(float x, unsigned int r) {
        return bf16_round_stochastic(x, r);
    }
};

template <> struct Storage<__half> {
    using bits = unsigned short;
    using compute = float;
    static FUSEDOPT_DEVICE float load(unsigned short h) { return f16_widen(h); }
    template <int R = NEAREST_EVEN>
    static FUSEDOPT_DEVICE unsigned short store(float x) { return f16_round<R>(x); }
    static FUSEDOPT_DEVICE unsigned short store_stochastic(float x, unsigned int r) {
        return f16_round_stochastic(x, r);
    }
};

// --- remainder masters (bfloat16 params) --------------------------------------------------
// The fp32 master's bits u split into the bf16 param hi = round-to-nearest-away(u) (the
// nearest bf16, which the forward pass reads) and the int16 remainder r = u - (hi << 16),
// in [-2^15, 2^15): rounding away adds 2^15 before truncating, so hi << 16 is within
// [u - 2^15 + 1, u + 2^15] and r fits, for either sign (the sign bit rides in hi) and
// through the carry into the exponent when hi rounded up. Rebuilding is
// (hi << 16) + r in 32-bit two's complement: the master, bit for bit. (No rule with ties
// to even can do this: an even hi would need 2^16 + 1 remainders.) A NaN master keeps a
// NaN param (hi gets the quiet bit); its payload is not kept.

struct Split {
    unsigned short hi;
    short remainder;
};

FUSEDOPT_DEVICE Split split_master(float master) {
    const unsigned int u = float_bits(master);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return Split{static_cast<unsigned short>((u >> 16) | 0x0040u), static_cast<short>(0)};
    }
    const unsigned short hi = bf16_round<NEAREST_AWAY>(master);
    const unsigned int low = u - (static_cast<unsigned int>(hi) << 16);  // r mod 2^32
    return Split{hi, static_cast<short>(static_cast<unsigned short>(low & 0xffffu))};
}

FUSEDOPT_DEVICE float rebuild_master(unsigned short hi, short remainder) {
    const unsigned int r = static_cast<unsigned int>(static_cast<int>(remainder));  // sign-extended
    return bits_float((static_cast<unsigned int>(hi) << 16) + r);
}

}  // namespace fusedopt
