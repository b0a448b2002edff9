// Generated from fusedopt/algorithms/ademamix.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// AdEMAMix, Adam with a mixture of a fast and a slow gradient EMA (Pagliardini et al., 2024),
// as bitsandbytes' 32-bit ``AdEMAMix`` has it.
//
//     m1 = b1 m1 + (1 - b1) g;  m2 = b3_t m2 + (1 - b3_t) g;  nu = b2 nu + (1 - b2) g^2
//     theta -= lr (m1 / (1 - b1^t) + alpha_t m2) / (sqrt(nu) / sqrt(1 - b2^t) + eps)
//
// The warm-ups are functions of the step, computed on the host in float64: with ``t_alpha``,
// ``alpha_t = min(t alpha / t_alpha, alpha)``; with ``t_beta3``, beta3 moves from b1 to b3 as
// ``b3_t = min(exp(ln b1 ln b3 / ((1 - t / t_beta3) ln b3 + (t / t_beta3) ln b1)), b3)`` (a
// half-life growing linearly with t). Weight decay: bitsandbytes' decoupled ``theta *= 1 - lr
// wd`` first (torch convention); Keras-style ``theta -= theta wd lr`` in the Keras convention.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct AdemamixScalars {
    C lr, wd, wd_factor, b1, one_minus_b1, b2, one_minus_b2, b3, one_minus_b3, bc1, root_bc2, alpha, eps;
};

template <typename C, int FLAVOR>
struct AdemamixRule {
    AdemamixScalars<C> k;

    static constexpr int n_scalars = 13;
    static FUSEDOPT_DEVICE AdemamixRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11], row[12]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m1 = s[0];
        C& m2 = s[1];
        C& nu = s[2];
        C mixed;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        m1 = k.b1 * m1 + k.one_minus_b1 * g;
        m2 = k.b3 * m2 + k.one_minus_b3 * g;
        nu = k.b2 * nu + k.one_minus_b2 * (g * g);
        mixed = m1 / k.bc1 + k.alpha * m2;
        p = p - k.lr * (mixed / (sqrt(nu) / k.root_bc2 + k.eps));
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void ademamix(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 3, fusedopt::AdemamixRule<C, FLAVOR>);
}
