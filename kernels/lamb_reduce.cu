// Generated from fusedopt/algorithms/lamb.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The reduction phase of Lamb: the per-element terms of p_sq, u_sq
// (norms in fusedopt/algorithms/lamb.py), summed per tensor by kernels/reduce.cuh.
#include "reduce.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
// Then the per-tensor ones, made from the reduction phase's sums on the device.
template <typename C>
struct LambScalars {
    C lr, wd, wd_factor, b2, one_minus_b1, one_minus_b2, bc1, bc2, eps, trust_lr;
};

template <typename C, int FLAVOR>
struct LambTerms {
    LambScalars<C> k;

    using compute = C;
    // The grad as stored (the grad pre-pass) or as the element pass sees it (clipped).
    static constexpr bool as_stored = false;
    static constexpr int n_terms = 2;
    // The operands the terms read (kernels/reduce.cuh): no other is loaded.
    static constexpr unsigned reads = READS_P | READS_G | (READS_SLOT << 0) | (READS_SLOT << 1);
    static FUSEDOPT_DEVICE LambTerms from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], C(0)}}; }

    FUSEDOPT_DEVICE void operator()(C p, C g, const C* s, C* out) const {
        C m = s[0];
        C v = s[1];
        C u;
        if (FLAVOR == KERAS) {
            if (FLAVOR == TORCH_L2) {
                if (k.wd != C(0)) {
                    g = g + k.wd * p;
                }
            } else {
                p = p * k.wd_factor;
            }
            m = m + (g - m) * k.one_minus_b1;
            v = v + (g * g - v) * k.one_minus_b2;
            u = m / k.bc1 / (sqrt(v / k.bc2) + k.eps);
        } else {
            m = m + k.one_minus_b1 * (g - m);
            v = k.b2 * v + k.one_minus_b2 * (g * g);
            u = m / k.bc1 / (sqrt(v / k.bc2) + k.eps) + k.wd * p;
        }
        out[0] = p * p;
        out[1] = u * u;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void lamb_reduce(FUSEDOPT_REDUCE_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_REDUCE(P, G, S, MODE, 2, fusedopt::LambTerms<C, FLAVOR>);
}
