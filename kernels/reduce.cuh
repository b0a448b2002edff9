// The reduction phases (fusedopt/engine/reductions.py): an optimizer's per-tensor reductions
// (LAMB's norms, StableAdamW's RMS), and the grad pre-pass's (each tensor's sums of g^2 and
// g - g: clipping by norm, the loss scale's inf/NaN flag). Each tensor's sums of the terms
// a reduction rule gives per element, over the optimizer's own launch table (common.cuh),
// nothing written but the sums. Two launches per launch group:
//   <family>_reduce<P, G, S, MODE, flags...>  one block per work item (B of them): each
//       thread sums the terms of the elements it visits in double, the block adds its
//       threads' sums in a fixed tree, and partial[r * B + b] = block b's sum of term r
//       (the grad pre-pass's: gradsums_reduce<G, N>, grads of type G in a table of N slots)
//   combine_sums  one thread per term and tensor: sums[r * T + t] = partial[r * B + b]
//       added over tensor t's work items b in ascending order (0 for an empty tensor)
// Every element is loaded as the element pass loads it - widened, the grad clipped
// (clamp(g * scale, -limit, limit) from the table), the param through its MODE - or, for
// terms of the grads as stored (Terms::as_stored: the pre-pass, whose sums decide the
// clip), the grad widened to double and not clipped; only the operands the rule reads (the
// rule struct's READS) are read at all. The sums are formed in an order fixed by the launch
// shape (THREADS_PER_BLOCK, CUDA_CHUNK): the same every run, whatever the scheduling; no
// atomics. raise_nan_flag makes a loss-scaled step's device flag from the pre-pass's sums.
#pragma once

#include "common.cuh"

namespace fusedopt {

//: Threads a block may have (CUDA's limit): the size of the block's shared sums.
constexpr int MAX_BLOCK_THREADS = 1024;

// Bits of a reduction rule's READS: the param (with its master slot), the grad, and
// READS_SLOT << k for slot k.
constexpr unsigned READS_P = 1u, READS_G = 2u, READS_SLOT = 4u;

// The param's value in the compute type as the element pass sees it (Element::run):
// from the master, the split halves, itself plus its compensation, or itself.
template <typename P, int MODE>
FUSEDOPT_DEVICE compute_t<P> param_value(typename Storage<P>::bits p,
                                         typename MasterSlot<MODE, P>::type x) {
    using C = compute_t<P>;
    if constexpr (MODE == MASTER) {
        return static_cast<C>(x);
    } else if constexpr (MODE == REMAINDER) {
        return rebuild_master(p, static_cast<short>(x));
    } else if constexpr (MODE == KAHAN) {
        return Storage<P>::load(p) + Storage<P>::load(x);
    } else {
        (void)x;
        return Storage<P>::load(p);
    }
}

// The block's sums of its threads' acc[0, NR) into partial[r * gridDim.x + blockIdx.x], in
// a tree fixed by blockDim.x: at each level the upper part of the live threads' values is
// added into the lower part. Every thread of the block calls it.
template <int NR>
FUSEDOPT_DEVICE void store_block_sums(const double* acc, double* partial) {
    __shared__ double shared[2][MAX_BLOCK_THREADS];
    const unsigned tid = threadIdx.x;
    for (int r = 0; r < NR; ++r) shared[r][tid] = acc[r];
    __syncthreads();
    for (unsigned width = blockDim.x; width > 1;) {
        const unsigned half = (width + 1) / 2;
        if (tid < width - half) {
            for (int r = 0; r < NR; ++r) shared[r][tid] += shared[r][tid + half];
        }
        __syncthreads();
        width = half;
    }
    if (tid == 0) {
        for (int r = 0; r < NR; ++r) {
            partial[static_cast<long long>(r) * gridDim.x + blockIdx.x] = shared[r][0];
        }
    }
}

// Each tensor's Terms from the step's scalar rows (an optimizer's reduction).
template <typename Terms, typename C>
struct TermsOfRows {
    Steps<C> steps;
    FUSEDOPT_DEVICE Terms of(int t) const { return Terms::from(steps.row(t)); }
};

// Terms that read no scalars (the grad pre-pass's).
template <typename Terms>
struct TermsWithoutScalars {
    FUSEDOPT_DEVICE Terms of(int) const { return Terms{}; }
};

// This block's sums of Terms over its chunk into partial[r * gridDim.x + blockIdx.x]; the
// terms of tensor t are ``source.of(t)``. They are computed in Terms::compute, from the
// grad clipped - or, for Terms::as_stored, from the grad as stored (not clipped: the grad
// pre-pass, whose sums decide the clip).
template <typename P, typename G, typename S, int MODE, int NS, typename Terms,
          typename Source>
FUSEDOPT_DEVICE void reduce_chunk(const long long* table, int n_tensors, long long chunk,
                                  const Source& source, double* partial) {
    using C = typename Terms::compute;
    using PB = typename Storage<P>::bits;
    using GB = typename Storage<G>::bits;
    using SB = typename Storage<S>::bits;
    using XB = typename MasterSlot<MODE, P>::type;
    constexpr bool HAS_SLOT = HasSlot<MODE>::value;
    constexpr int N = NS + (HAS_SLOT ? 1 : 0);
    constexpr int NSA = NS > 0 ? NS : 1;
    constexpr int NR = Terms::n_terms;
    constexpr unsigned READS = Terms::reads;
    constexpr bool READ_P = (READS & READS_P) != 0;
    constexpr bool READ_X = READ_P && HAS_SLOT;
    // Elements per vector step: 16 bytes of the narrowest operand read, so every operand
    // read moves in whole 128-bit accesses and the chunk (a multiple of every width) keeps
    // each step aligned.
    constexpr int NARROW = Min<Min<READ_P ? sizeof(PB) : 16, sizeof(GB)>::value,
                               Min<NS ? sizeof(SB) : 16, READ_X ? sizeof(XB) : 16>::value
                               >::value;
    constexpr int VEC = VecWidth<NARROW>::value;
    static_assert(NR >= 1 && NR <= 2, "a reduction pass sums 1 or 2 terms");

    const TableView<N> view{table, n_tensors};
    const auto [t, begin, end] = view.chunk_of(blockIdx.x, chunk);
    constexpr bool CLIPS = !Terms::as_stored;
    const C scale = CLIPS ? static_cast<C>(view.grad_scale(t)) : C(1);
    const C limit = CLIPS ? static_cast<C>(view.grad_limit(t)) : C(0);
    const Terms terms = source.of(t);

    const PB* p = reinterpret_cast<const PB*>(view.address(0, t));
    const GB* g = reinterpret_cast<const GB*>(view.address(1, t));
    const SB* s[NSA];
    const XB* x = HAS_SLOT ? reinterpret_cast<const XB*>(view.address(2 + NS, t)) : nullptr;
    long long misaligned = view.address(1, t) & 15;
    if (READ_P) misaligned |= view.address(0, t) & 15;
    for (int k = 0; k < NS; ++k) {
        s[k] = reinterpret_cast<const SB*>(view.address(2 + k, t));
        if (READS & (READS_SLOT << k)) misaligned |= view.address(2 + k, t) & 15;
    }
    if (READ_X) misaligned |= view.address(2 + NS, t) & 15;
    assume_global(p);
    assume_global(g);
    for (int k = 0; k < NS; ++k) assume_global(s[k]);
    if (HAS_SLOT) assume_global(x);

    double acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = 0.0;
    long long i = begin;
    if (misaligned == 0) {
        // The VEC elements go through in parts of 16 bytes of the widest operand read (as
        // apply_chunk's do): a narrower operand is loaded whole first, a wider one a part
        // at a time, so only a part of it is held in registers.
        constexpr int WIDE = Max<Max<READ_P ? sizeof(PB) : 1, sizeof(GB)>::value,
                                 Max<NS ? sizeof(SB) : 1, READ_X ? sizeof(XB) : 1>::value
                                 >::value;
        constexpr int PART = VecWidth<WIDE>::value;
        constexpr int PARTS = VEC / PART;
        const long long vec_end = begin + (end - begin) / VEC * VEC;
        for (long long j = begin + static_cast<long long>(threadIdx.x) * VEC; j < vec_end;
             j += static_cast<long long>(blockDim.x) * VEC) {
            Operand<PB, VEC, PART> po;
            Operand<GB, VEC, PART> go;
            Operand<SB, VEC, PART> so[NSA];
            Operand<XB, VEC, PART> xo;
            if (READ_P) po.begin(p + j);
            go.begin(g + j);
            for (int k = 0; k < NS; ++k) {
                if (READS & (READS_SLOT << k)) so[k].begin(s[k] + j);
            }
            if (READ_X) xo.begin(x + j);
#pragma unroll
            for (int q = 0; q < PARTS; ++q) {
                if (READ_P) po.load_part(p + j, q);
                go.load_part(g + j, q);
                for (int k = 0; k < NS; ++k) {
                    if (READS & (READS_SLOT << k)) so[k].load_part(s[k] + j, q);
                }
                if (READ_X) xo.load_part(x + j, q);
#pragma unroll
                for (int e = 0; e < PART; ++e) {
                    C se[NSA];
                    for (int k = 0; k < NS; ++k) {
                        se[k] = (READS & (READS_SLOT << k))
                                    ? static_cast<C>(Storage<S>::load(so[k].at(q, e))) : C(0);
                    }
                    const C pe = READ_P ? static_cast<C>(param_value<P, MODE>(
                                              po.at(q, e), xo.at(q, e))) : C(0);
                    const C gl = static_cast<C>(Storage<G>::load(go.at(q, e)));
                    const C ge = CLIPS ? clip_grad(gl, scale, limit) : gl;
                    C out[NR];
                    terms(pe, ge, se, out);
                    for (int r = 0; r < NR; ++r) acc[r] += static_cast<double>(out[r]);
                }
            }
        }
        i = vec_end;
    }
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) {
        C se[NSA];
        for (int k = 0; k < NS; ++k) {
            se[k] = (READS & (READS_SLOT << k)) ? static_cast<C>(Storage<S>::load(s[k][j])) : C(0);
        }
        const C pe = READ_P ? static_cast<C>(param_value<P, MODE>(p[j], READ_X ? x[j] : XB()))
                            : C(0);
        const C gl = static_cast<C>(Storage<G>::load(g[j]));
        const C ge = CLIPS ? clip_grad(gl, scale, limit) : gl;
        C out[NR];
        terms(pe, ge, se, out);
        for (int r = 0; r < NR; ++r) acc[r] += static_cast<double>(out[r]);
    }

    store_block_sums<NR>(acc, partial);
}

// First index in sorted work[0, n) whose value is >= key.
FUSEDOPT_DEVICE long long first_at_least(const long long* work, long long n, long long key) {
    long long lo = 0, hi = n;
    while (lo < hi) {
        const long long mid = lo + (hi - lo) / 2;
        if (work[mid] < key) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

}  // namespace fusedopt

// One thread per (term, tensor): the tensor's block sums added in work-item order. ``work``
// is the table's work row (sorted: items are tensor-major), n_work its length.
__global__ void combine_sums(const long long* __restrict__ work, long long n_work, int n_tensors,
                             int n_terms, const double* __restrict__ partial,
                             double* __restrict__ sums) {
    const long long u = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (u >= static_cast<long long>(n_terms) * n_tensors) return;
    const long long r = u / n_tensors, t = u % n_tensors;
    const long long lo = fusedopt::first_at_least(work, n_work, t << 32);
    const long long hi = fusedopt::first_at_least(work, n_work, (t + 1) << 32);
    double acc = 0.0;
    for (long long b = lo; b < hi; ++b) acc += partial[r * n_work + b];
    sums[u] = acc;
}

// The parameters of a reduction kernel: the optimizer kernel's, then the block sums' output.
#define FUSEDOPT_REDUCE_PARAMS(P) FUSEDOPT_OPTIMIZER_PARAMS(P), double* __restrict__ partial

// The body of a reduction kernel: Terms (the last argument) over this block's chunk.
#define FUSEDOPT_REDUCE(P, G, S, MODE, NS, ...)                                           \
    fusedopt::reduce_chunk<P, G, S, MODE, NS, __VA_ARGS__>(                                 \
        table, n_tensors, chunk,                                                            \
        fusedopt::TermsOfRows<__VA_ARGS__, fusedopt::compute_t<P>>{                        \
            fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors}},      \
        partial)

// The parameters of a reduction kernel of the grads as stored (Terms::as_stored): the
// table, its tensor count and chunk, the block sums' output. No scalars, no flags.
#define FUSEDOPT_STORED_REDUCE_PARAMS                                                      \
    const long long* __restrict__ table, int n_tensors, long long chunk,                    \
        double* __restrict__ partial

// Its body: Terms over this block's chunk of grads of type G, in a table of N slots (the
// optimizer's, master included): only the grads are read (Terms::reads), so the other
// operands' types do not matter and are given as G.
#define FUSEDOPT_STORED_REDUCE(G, N, ...)                                                  \
    fusedopt::reduce_chunk<G, G, G, fusedopt::PLAIN, N, __VA_ARGS__>(                       \
        table, n_tensors, chunk, fusedopt::TermsWithoutScalars<__VA_ARGS__>{}, partial)

namespace fusedopt {

// One thread: flags[slot] = (or_in ? flags[slot] : 0) | whether any of sums[0, n_tensors)
// is NaN (a loss-scaled step's flag, from the grad pre-pass's sums of g - g; or_in for a
// launch group after the step's first).
FUSEDOPT_DEVICE void raise_nan_flag(int n_tensors, const double* sums, int* flags,
                                    long long slot, int or_in) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int found = or_in ? flags[slot] : 0;
    for (int t = 0; t < n_tensors; ++t) {
        const double sum = sums[t];
        found |= sum != sum ? 1 : 0;
    }
    flags[slot] = found;
}

}  // namespace fusedopt
