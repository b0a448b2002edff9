// Shared pieces of every fusedopt kernel: compute types, 128-bit vector access,
// the multi-tensor launch table and weight-decay flavours.
//
// Launch table (one int64 buffer on the device, built by fusedopt/_cuda/launch.py):
//   table[k * T + t]            address of operand k of tensor t; k = 0 param, 1 grad,
//                               2 .. 2+NS-1 the optimizer's state slots
//   table[(2 + NS) * T + t]     element count of tensor t
//   table[(3 + NS) * T + t]     grad scale of tensor t, a double's bits (1.0: no norm clipping)
//   table[(4 + NS) * T + t]     grad limit of tensor t, a double's bits (+inf: no clipvalue)
//   table[(5 + NS) * T + b]     block b's work: (tensor << 32) | chunk index
// Block b updates elements [chunk * CHUNK, min((chunk + 1) * CHUNK, n)) of its tensor;
// its threads stride through that range, 128-bit vectors first, then a scalar tail.
// Every grad is clipped on load, g -> clamp(g * scale, -limit, limit), before the rule sees
// it: Keras' clipnorm / global_clipnorm (a scale) and clipvalue (a limit), with no change to
// any optimizer's rule or arguments. Both are exact no-ops at 1.0 and +inf.
#pragma once

#include "storage.cuh"

namespace fusedopt {

// Storage type -> type the math runs in (PyTorch calls this opmath_t).
template <typename T> struct ComputeOf { using type = T; };
template <typename T> using compute_t = typename ComputeOf<T>::type;

// Weight-decay flavours (mirrored in fusedopt/_registry.py). KERAS: theta -= theta * wd * lr
// before the update (decoupled). TORCH_L2: g += wd * theta. TORCH_DECOUPLED: theta *= 1 - lr wd
// (torch AdamW), with 1 - lr wd rounded once on the host as torch does.
enum Flavor { KERAS = 0, TORCH_L2 = 1, TORCH_DECOUPLED = 2 };

// Every kernel's scalars begin with these three, in this order.
template <typename C>
struct Decay {
    C lr, wd, wd_factor;
};

template <int F, typename C>
FUSEDOPT_DEVICE void weight_decay(C& p, C& g, const Decay<C>& d) {
    if (F == KERAS) {
        p = p - p * d.wd * d.lr;
    } else if (F == TORCH_L2) {
        g = g + d.wd * p;
    } else {
        p = p * d.wd_factor;
    }
}

// The bits of a table entry as the double they hold.
FUSEDOPT_DEVICE double as_double(long long bits) {
#if defined(FUSEDOPT_HOST_BUILD)
    double d;
    __builtin_memcpy(&d, &bits, sizeof d);
    return d;
#else
    return __longlong_as_double(bits);
#endif
}

// g * scale clamped to [-limit, limit]; written with comparisons so a NaN passes through
// (as torch.clamp does) instead of being replaced by fmin/fmax.
template <typename C>
FUSEDOPT_DEVICE C clip_grad(C g, C scale, C limit) {
    const C x = g * scale;
    return x > limit ? limit : (x < -limit ? -limit : x);
}

template <typename T>
FUSEDOPT_DEVICE void assume_global(const T* ptr) {
    __builtin_assume(__isGlobal(ptr));
}

// N values of T moved as one aligned unit: 16 bytes -> one 128-bit access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
    T v[N];
};

// Elements of T per 128-bit access.
template <typename T> struct VecWidth { static constexpr int value = 16 / sizeof(T); };

template <int NS>
struct TableView {
    const long long* table;
    int n_tensors;

    FUSEDOPT_DEVICE long long address(int operand, int t) const {
        return table[operand * n_tensors + t];
    }
    FUSEDOPT_DEVICE long long size(int t) const { return table[(2 + NS) * n_tensors + t]; }
    FUSEDOPT_DEVICE double grad_scale(int t) const {
        return as_double(table[(3 + NS) * n_tensors + t]);
    }
    FUSEDOPT_DEVICE double grad_limit(int t) const {
        return as_double(table[(4 + NS) * n_tensors + t]);
    }
    FUSEDOPT_DEVICE long long work(int block) const {
        return table[(5 + NS) * n_tensors + block];
    }
};

// Runs rule(p, g, s) over this block's chunk: p and s are updated in place in the compute
// type, g is read (clipped as the table says). NS state slots are stored in the compute
// type, param and grad in T.
template <typename T, int NS, typename Rule>
FUSEDOPT_DEVICE void apply_chunk(const long long* table, int n_tensors, long long chunk,
                                 const Rule& rule) {
    using C = compute_t<T>;
    constexpr int VEC = VecWidth<T>::value;
    constexpr int NSA = NS > 0 ? NS : 1;  // zero-length arrays are not C++

    const TableView<NS> view{table, n_tensors};
    const long long work = view.work(blockIdx.x);
    const int t = static_cast<int>(work >> 32);
    const long long n = view.size(t);
    const long long begin = (work & 0xffffffffLL) * chunk;
    const long long end = begin + chunk < n ? begin + chunk : n;
    const C scale = static_cast<C>(view.grad_scale(t));
    const C limit = static_cast<C>(view.grad_limit(t));

    T* p = reinterpret_cast<T*>(view.address(0, t));
    const T* g = reinterpret_cast<const T*>(view.address(1, t));
    C* s[NSA];
    long long misaligned = (view.address(0, t) | view.address(1, t)) & 15;
    for (int k = 0; k < NS; ++k) {
        s[k] = reinterpret_cast<C*>(view.address(2 + k, t));
        misaligned |= view.address(2 + k, t) & 15;
    }
    // The addresses come from a table in memory, so the compiler cannot know they are
    // global; saying so turns generic LD/ST into LDG/STG.
    assume_global(p);
    assume_global(g);
    for (int k = 0; k < NS; ++k) assume_global(s[k]);

    long long i = begin;
    // Vector main loop: chunk sizes are multiples of VEC, so begin is VEC-aligned in
    // elements; byte alignment of every operand was checked above.
    if (misaligned == 0) {
        const long long vec_end = begin + (end - begin) / VEC * VEC;
        for (long long j = begin + static_cast<long long>(threadIdx.x) * VEC; j < vec_end;
             j += static_cast<long long>(blockDim.x) * VEC) {
            Pack<T, VEC> pv = *reinterpret_cast<const Pack<T, VEC>*>(p + j);
            const Pack<T, VEC> gv = *reinterpret_cast<const Pack<T, VEC>*>(g + j);
            Pack<C, VEC> sv[NSA];
            for (int k = 0; k < NS; ++k) sv[k] = *reinterpret_cast<const Pack<C, VEC>*>(s[k] + j);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                C pe = static_cast<C>(pv.v[e]);
                C se[NSA];
                for (int k = 0; k < NS; ++k) se[k] = sv[k].v[e];
                rule(pe, clip_grad(static_cast<C>(gv.v[e]), scale, limit), se);
                pv.v[e] = static_cast<T>(pe);
                for (int k = 0; k < NS; ++k) sv[k].v[e] = se[k];
            }
            *reinterpret_cast<Pack<T, VEC>*>(p + j) = pv;
            for (int k = 0; k < NS; ++k) *reinterpret_cast<Pack<C, VEC>*>(s[k] + j) = sv[k];
        }
        i = vec_end;
    }
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) {
        C pe = static_cast<C>(p[j]);
        C se[NSA];
        for (int k = 0; k < NS; ++k) se[k] = s[k][j];
        rule(pe, clip_grad(static_cast<C>(g[j]), scale, limit), se);
        p[j] = static_cast<T>(pe);
        for (int k = 0; k < NS; ++k) s[k][j] = se[k];
    }
}

}  // namespace fusedopt
