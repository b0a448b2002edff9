// The reduction phase (kernels/reduce.cuh) over quantized slots (kernels/quantized.cuh): an
// optimizer's per-tensor sums (LAMB's norms, StableAdamW's RMS) where its state is q8 / q4
// codes. Each slot element the terms read is its block's value, map[code] * absmax in
// float32, as the quantized element pass decodes it (and as the CPU's reduction does:
// fusedopt/backends/cpu/reduce.py), then widened to the compute type; the param and the
// grad are loaded as reduce.cuh loads them (the grad clipped). Every thread sums the terms
// of the elements it visits (begin + threadIdx.x, then every blockDim.x) in double, the
// block adds its threads' sums in reduce.cuh's fixed tree, combine_sums adds the blocks: an
// order fixed by the launch shape, no atomics, the sums within the bound of
// tests/test_cuda_reductions.py of the CPU's.
//
// One element at a time: a block's absmax is read once per element (from L1 after its
// first), the code from its byte (q4: the even element in the low half). The maps are the
// quantized step's argument (fusedopt/backends/cuda/quantized.py's map_tables): slot k's
// entries at maps + k * 3 * LEVELS.
#pragma once

#include "quantized.cuh"
#include "reduce.cuh"

namespace fusedopt {

template <typename P, typename G, typename F, int MODE, int NS, typename Terms,
          typename Source>
FUSEDOPT_DEVICE void reduce_quantized_chunk(const long long* table, int n_tensors,
                                            long long chunk, const Source& source,
                                            const float* maps, double* partial) {
    using C = typename Terms::compute;
    using Q = QuantFormat<F>;
    using PB = typename Storage<P>::bits;
    using GB = typename Storage<G>::bits;
    using XB = typename MasterSlot<MODE, P>::type;
    constexpr bool HAS_SLOT = HasSlot<MODE>::value;
    constexpr int N = NS + (HAS_SLOT ? 1 : 0);
    constexpr int NSA = NS > 0 ? NS : 1;
    constexpr int NR = Terms::n_terms;
    constexpr unsigned READS = Terms::reads;
    constexpr bool READ_P = (READS & READS_P) != 0;
    constexpr bool READ_X = READ_P && HAS_SLOT;
    static_assert(NR >= 1 && NR <= 2, "a reduction pass sums 1 or 2 terms");
    static_assert(!Terms::as_stored, "the grads as stored have no quantized slots");

    const TableView<N> view{table, n_tensors};
    const auto [t, begin, end] = view.chunk_of(blockIdx.x, chunk);
    const C scale = static_cast<C>(view.grad_scale(t));
    const C limit = static_cast<C>(view.grad_limit(t));
    const Terms terms = source.of(t);

    const PB* p = reinterpret_cast<const PB*>(view.address(0, t));
    const GB* g = reinterpret_cast<const GB*>(view.address(1, t));
    const unsigned char* s[NSA];
    const XB* x = HAS_SLOT ? reinterpret_cast<const XB*>(view.address(2 + NS, t)) : nullptr;
    for (int k = 0; k < NS; ++k) s[k] = reinterpret_cast<const unsigned char*>(view.address(2 + k, t));
    assume_global(p);
    assume_global(g);
    for (int k = 0; k < NS; ++k) assume_global(s[k]);
    if (HAS_SLOT) assume_global(x);

    double acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = 0.0;
    for (long long j = begin + threadIdx.x; j < end; j += blockDim.x) {
        C se[NSA];
        const long long b = j / Q::BLOCK;
        const int e = static_cast<int>(j - b * Q::BLOCK);
#pragma unroll
        for (int k = 0; k < NS; ++k) {
            se[k] = C(0);
            if (READS & (READS_SLOT << k)) {
                const unsigned char* record = s[k] + b * Q::RECORD;
                const float absmax = *reinterpret_cast<const float*>(record);
                const float* map = maps + k * 3 * Q::LEVELS;
                se[k] = static_cast<C>(__ldg(map + code_at<Q::BITS>(record + 4, e)) * absmax);
            }
        }
        const C pe = READ_P ? static_cast<C>(param_value<P, MODE>(p[j], READ_X ? x[j] : XB()))
                            : C(0);
        const C ge = clip_grad(static_cast<C>(Storage<G>::load(g[j])), scale, limit);
        C out[NR];
        terms(pe, ge, se, out);
        for (int r = 0; r < NR; ++r) acc[r] += static_cast<double>(out[r]);
    }

    store_block_sums<NR>(acc, partial);
}

}  // namespace fusedopt

// The parameters of a reduction kernel over quantized slots: the reduction kernel's, then
// the slots' map tables.
#define FUSEDOPT_QUANTIZED_REDUCE_PARAMS(P) \
    FUSEDOPT_REDUCE_PARAMS(P), const float *__restrict__ maps

// Its body: Terms (the last argument) over this block's chunk, slots in format F.
#define FUSEDOPT_REDUCE_QUANTIZED(P, G, F, MODE, NS, ...)                                 \
    fusedopt::reduce_quantized_chunk<P, G, F, MODE, NS, __VA_ARGS__>(                       \
        table, n_tensors, chunk,                                                            \
        fusedopt::TermsOfRows<__VA_ARGS__, fusedopt::compute_t<P>>{                        \
            fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors}},      \
        maps, partial)

