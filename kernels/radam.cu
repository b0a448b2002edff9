// Generated from fusedopt/algorithms/radam.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// RAdam, Adam with the variance of its adaptive step rectified (Liu et al., 2020,
// https://arxiv.org/abs/1908.03265), as torch.optim.RAdam has it.
//
//     m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
//     rho_inf = 2 / (1 - b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
//     rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
//                 theta -= lr r sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
//     else:       theta -= lr / (1 - b1^t) * m
//
// Everything but the element math is a function of the step, computed on the host in float64:
// ``adaptive_step`` (0 while the variance is not yet tractable) and ``plain_step`` (0 after).
// Weight decay: L2 in torch, or ``theta *= 1 - lr wd`` with ``decoupled_weight_decay=True``;
// Keras-style decoupled ``theta -= theta wd lr`` in the Keras convention.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct RadamScalars {
    C lr, wd, wd_factor, b2, one_minus_b1, one_minus_b2, eps, adaptive_step, plain_step, rectified;
};

template <typename C, int FLAVOR>
struct RadamRule {
    RadamScalars<C> k;

    static constexpr int n_scalars = 10;
    static FUSEDOPT_DEVICE RadamRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C& v = s[1];
        C step;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        m = m + k.one_minus_b1 * (g - m);
        v = k.b2 * v + k.one_minus_b2 * (g * g);
        step = k.rectified > C(0) ? m * k.adaptive_step / (sqrt(v) + k.eps) : m * k.plain_step;
        p = p - step;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void radam(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::RadamRule<C, FLAVOR>);
}
