// Host stand-ins for the CUDA language, so kernels/*.cu compile with g++ and run on the CPU.
//
// A launch runs every thread of every block one after another on one host thread
// (tests/cuda_host/launcher.h). That is a legal schedule only for threads that never wait for
// or talk to each other, which is what fusedopt kernels promise: each thread owns its
// elements. Everything that would let threads cooperate - barriers, shuffles, atomics, shared
// memory - is a compile-time error here, so a kernel that starts relying on it cannot pass
// the host tests by accident. Helper kernels that are no optimizer's (block reductions)
// are built with FUSEDOPT_HOST_COOPERATIVE instead, as are the kernels of quantized state,
// whose warps reduce a block's absmax by shuffles: see below.
#pragma once

#ifndef FUSEDOPT_HOST_BUILD
#error "compile the host build with -DFUSEDOPT_HOST_BUILD (kernels/common.cuh reads it)"
#endif

// Every standard header the host build uses comes first: the keyword macros below (e.g.
// __noinline__) would break libstdc++ headers included after them.
#include <math.h>

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(FUSEDOPT_HOST_COOPERATIVE)
#include "fibers.h"
#endif

// The float overloads of sqrt, fabs, ... must win for float arguments, as in CUDA;
// with only ::sqrt(double) visible, float math would silently run in double.
using std::abs;
using std::ceil;
using std::copysign;
using std::exp;
using std::fabs;
using std::floor;
using std::fma;
using std::fmax;
using std::fmin;
using std::log;
using std::pow;
using std::sqrt;

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

// Host stand-ins for the 16-bit storage types of cuda_fp16.h and cuda_bf16.h. Kernels use
// them only as tags and for their size (kernels/storage.cuh moves 16-bit values as their
// bits and converts with integer operations), so two bytes of storage is all they are.
struct alignas(2) __half {
    unsigned short __x;
};
struct alignas(2) __nv_bfloat16 {
    unsigned short __x;
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit storage types");

namespace fusedopt_host {

// Set by the launcher before each simulated thread runs; read-only to kernels.
inline thread_local uint3 block_idx{0, 0, 0};
inline thread_local uint3 thread_idx{0, 0, 0};
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;

template <typename...>
inline constexpr bool always_false = false;

// __builtin_assume(c) promises c to the compiler; here the promise is checked.
inline void assume(bool holds, const char* what, const char* file, int line) {
    if (!holds) {
        throw std::logic_error(std::string(file) + ":" + std::to_string(line) +
                               ": __builtin_assume(" + what + ") does not hold");
    }
}

}  // namespace fusedopt_host

#define blockIdx (static_cast<const uint3&>(::fusedopt_host::block_idx))
#define threadIdx (static_cast<const uint3&>(::fusedopt_host::thread_idx))
#define blockDim (static_cast<const dim3&>(::fusedopt_host::block_dim))
#define gridDim (static_cast<const dim3&>(::fusedopt_host::grid_dim))
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define FUSEDOPT_DEVICE inline
#define __builtin_assume(cond) ::fusedopt_host::assume(static_cast<bool>(cond), #cond, __FILE__, __LINE__)

// Every pointer a kernel sees on the host is ordinary memory, the host's "global" space.
inline unsigned int __isGlobal(const void*) { return 1; }

// Device math that plain C++ lacks. The approximate intrinsics (__fdividef, rsqrtf, ...)
// are exact here: results may differ from a GPU in the last bits (see kernels/README.md).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline double __dsqrt_rn(double x) { return std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
#define __ldg(ptr) (*(ptr))  // read-only cached load: a plain load
// CUDA's global min/max overloads (fmin/fmax semantics for floating point).
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }

#if defined(FUSEDOPT_HOST_COOPERATIVE)
// Helper kernels that are not optimizers (a block reduction, say) may cooperate: their
// launches run each block's threads as fibers (fibers.h), __syncthreads is the block's
// barrier and __shared__ memory is one static copy, used by one block at a time.
inline void __syncthreads() { ::fusedopt_host::FiberBlock::wait(); }
#define __shared__ static

namespace fusedopt_host {
inline unsigned int shuffle_words[1024];  // one per thread of the block that runs
}

// A warp shuffle as two barriers of the whole block around an exchange: every thread of the
// block must take part (a kernel that shuffles has every warp run the same rounds), whole
// warps only, the full mask.
template <typename T>
T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = warpSize) {
    static_assert(sizeof(T) == 4, "the host shuffle moves 32-bit words");
    const unsigned int me = threadIdx.x;
    const unsigned int partner = (me & ~31u) | ((me & 31u) ^ static_cast<unsigned int>(lane_mask));
    if (mask != 0xffffffffu || width != warpSize || blockDim.x % 32u || blockDim.y != 1 ||
        blockDim.z != 1 || lane_mask < 0 || lane_mask > 31) {
        throw std::logic_error("__shfl_xor_sync: the host build runs full-mask shuffles of "
                               "whole warps of 1-D blocks only");
    }
    unsigned int bits;
    std::memcpy(&bits, &value, sizeof bits);
    ::fusedopt_host::shuffle_words[me] = bits;
    __syncthreads();
    bits = ::fusedopt_host::shuffle_words[partner];
    __syncthreads();
    std::memcpy(&value, &bits, sizeof bits);
    return value;
}
#define FUSEDOPT_HOST_FORBID_BARRIERS 0
#else
#define FUSEDOPT_HOST_FORBID_BARRIERS 1
#endif

// Cooperation between threads: not allowed in a fusedopt kernel (see the top of this file).
#define FUSEDOPT_HOST_FORBID(name)                                                          \
    template <typename... A>                                                                \
    void name(A&&...) {                                                                     \
        static_assert(::fusedopt_host::always_false<A...>,                                  \
                      #name " makes threads cooperate; fusedopt kernels keep threads "      \
                      "independent (each owns its elements), and the host build runs "      \
                      "them one after another");                                            \
    }
#if FUSEDOPT_HOST_FORBID_BARRIERS
FUSEDOPT_HOST_FORBID(__syncthreads)
#endif
FUSEDOPT_HOST_FORBID(__syncthreads_count)
FUSEDOPT_HOST_FORBID(__syncthreads_and)
FUSEDOPT_HOST_FORBID(__syncthreads_or)
FUSEDOPT_HOST_FORBID(__syncwarp)
FUSEDOPT_HOST_FORBID(__threadfence)
FUSEDOPT_HOST_FORBID(__threadfence_block)
FUSEDOPT_HOST_FORBID(__shfl_sync)
FUSEDOPT_HOST_FORBID(__shfl_up_sync)
FUSEDOPT_HOST_FORBID(__shfl_down_sync)
#if FUSEDOPT_HOST_FORBID_BARRIERS
FUSEDOPT_HOST_FORBID(__shfl_xor_sync)
#endif
FUSEDOPT_HOST_FORBID(__ballot_sync)
FUSEDOPT_HOST_FORBID(__any_sync)
FUSEDOPT_HOST_FORBID(__all_sync)
FUSEDOPT_HOST_FORBID(__activemask)
FUSEDOPT_HOST_FORBID(atomicAdd)
FUSEDOPT_HOST_FORBID(atomicSub)
FUSEDOPT_HOST_FORBID(atomicExch)
FUSEDOPT_HOST_FORBID(atomicMin)
FUSEDOPT_HOST_FORBID(atomicMax)
FUSEDOPT_HOST_FORBID(atomicInc)
FUSEDOPT_HOST_FORBID(atomicDec)
FUSEDOPT_HOST_FORBID(atomicCAS)
FUSEDOPT_HOST_FORBID(atomicAnd)
FUSEDOPT_HOST_FORBID(atomicOr)
FUSEDOPT_HOST_FORBID(atomicXor)
#undef FUSEDOPT_HOST_FORBID
#if FUSEDOPT_HOST_FORBID_BARRIERS
#define __shared__                                                                          \
    static_assert(::fusedopt_host::always_false<>,                                          \
                  "__shared__ memory is for threads that cooperate; fusedopt kernels keep " \
                  "threads independent");
#endif
