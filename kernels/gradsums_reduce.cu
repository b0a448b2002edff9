// Generated from fusedopt/algorithms/gradsums.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The reduction phase of GradSums: the per-element terms of g_squares, g_finite
// (grad_terms in fusedopt/algorithms/gradsums.py), summed per tensor by kernels/reduce.cuh.
#include "reduce.cuh"

namespace fusedopt {

template <typename C>
struct GradsumsTerms {
    using compute = C;
    // The grad as stored (the grad pre-pass) or as the element pass sees it (clipped).
    static constexpr bool as_stored = true;
    static constexpr int n_terms = 2;
    // The operands the terms read (kernels/reduce.cuh): no other is loaded.
    static constexpr unsigned reads = READS_G;

    FUSEDOPT_DEVICE void operator()(C p, C g, const C* s, C* out) const {
        (void)p;
        (void)s;
        out[0] = g * g;
        out[1] = g - g;
    }
};

}  // namespace fusedopt

template <typename G, int N>
__global__ void gradsums_reduce(FUSEDOPT_STORED_REDUCE_PARAMS) {
    FUSEDOPT_STORED_REDUCE(G, N, fusedopt::GradsumsTerms<double>);
}

__global__ void raise_flag(int n_tensors, const double* __restrict__ sums,
                           int* __restrict__ flags, long long slot, int or_in) {
    fusedopt::raise_nan_flag(n_tensors, sums, flags, slot, or_in);
}
