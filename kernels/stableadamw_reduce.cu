// Generated from fusedopt/algorithms/stableadamw.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The reduction phase of StableAdamW: the per-element terms of rms_sq
// (rms_terms in fusedopt/algorithms/stableadamw.py), summed per tensor by kernels/reduce.cuh.
#include "reduce.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
// Then the per-tensor ones, made from the reduction phase's sums on the device.
template <typename C>
struct StableadamwScalars {
    C lr, wd, wd_factor, b1_comp, b1_hat, lerp_low, b2_hat, b2_comp, eps, eps_sq, wd_per_lr, lr_t, decay;
};

template <typename C, int FLAVOR>
struct StableadamwTerms {
    StableadamwScalars<C> k;

    using compute = C;
    // The grad as stored (the grad pre-pass) or as the element pass sees it (clipped).
    static constexpr bool as_stored = false;
    static constexpr int n_terms = 1;
    // The operands the terms read (kernels/reduce.cuh): no other is loaded.
    static constexpr unsigned reads = READS_G | (READS_SLOT << 1);
    static FUSEDOPT_DEVICE StableadamwTerms from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], C(0), C(0)}}; }

    FUSEDOPT_DEVICE void operator()(C p, C g, const C* s, C* out) const {
        C v = s[1];
        C floor;
        v = v * k.b2_hat + k.b2_comp * g * g;
        floor = k.eps_sq > v ? k.eps_sq : v;
        out[0] = g * g / floor;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void stableadamw_reduce(FUSEDOPT_REDUCE_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_REDUCE(P, G, S, MODE, 2, fusedopt::StableadamwTerms<C, FLAVOR>);
}
