// Generated from fusedopt/algorithms/adan.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Adan, adaptive Nesterov momentum (Xie et al., 2022, https://arxiv.org/abs/2208.06677), as
// torch-optimi 0.3.3's ``optimi.Adan`` has it.
//
//     b_hat = (b^t - b) / (b^t - 1)   (each beta debiased: the EMAs need no bias correction)
//     d = g - g_prev   (0 at a param's first step)
//     m = lerp(m, g, 1 - b1_hat);  v = lerp(v, d, 1 - b2_hat)
//     n = b3_hat n + (1 - b3_hat) (g + b2 d)^2
//     theta -= lr m / (sqrt(n) + eps) + lr b2 v / (sqrt(n) + eps)
//     theta /= 1 + lr wd      (decouple_lr: 1 + lr / max_lr wd; adam_wd: theta *= 1 - lr wd first)
//
// The fourth slot keeps the grad negated (``-g``), as optimi's ``prev_grad`` does, so that
// ``d`` is one addition. optimi's betas are the paper's complements (its 0.98, 0.92, 0.99 are
// the paper's 0.02, 0.08, 0.01). Weight decay in the Keras convention is Keras' own for every
// optimizer: ``theta -= theta * wd * lr`` first, no division after.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct AdanScalars {
    C keep, lr, lr_b2, shrink, b1_comp, b1_hat, b2, b2_comp, b2_hat, b3_hat, b3_comp, eps;
};

template <typename C, int FLAVOR>
struct AdanRule {
    AdanScalars<C> k;

    static constexpr int n_scalars = 12;
    static FUSEDOPT_DEVICE AdanRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C& v = s[1];
        C& n = s[2];
        C& neg_grad = s[3];
        C d, nesterov, denom;
        d = g + neg_grad;
        m = k.b1_comp + k.b1_comp < C(1) ? m + k.b1_comp * (g - m) : g - (g - m) * k.b1_hat;
        v = k.b2_comp + k.b2_comp < C(1) ? v + k.b2_comp * (d - v) : d - (d - v) * k.b2_hat;
        nesterov = d * k.b2 + g;
        n = n * k.b3_hat + k.b3_comp * nesterov * nesterov;
        neg_grad = -g;
        denom = sqrt(n) + k.eps;
        p = p * k.keep;
        p = p - k.lr * (m / denom);
        p = p - k.lr_b2 * (v / denom);
        p = p / k.shrink;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void adan(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 4, fusedopt::AdanRule<C, FLAVOR>);
}
