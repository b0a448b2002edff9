// Generated from fusedopt/algorithms/adamax.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Adamax, Adam's infinity-norm variant (Kingma & Ba, 2015).
//
// Keras (flavor KERAS): ``m += (g - m)(1 - b1);  u = max(b2 u, |g|);
// theta -= lr m / ((u + eps)(1 - b1^t))``.
// torch (flavor TORCH_L2): ``u = max(b2 u, |g| + eps);  theta -= lr / (1 - b1^t) * (m / u)``.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct AdamaxScalars {
    C lr, wd, wd_factor, b2, one_minus_b1, eps, bc1, step_size;
};

template <typename C, int FLAVOR>
struct AdamaxRule {
    AdamaxScalars<C> k;

    static constexpr int n_scalars = 8;
    static FUSEDOPT_DEVICE AdamaxRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C& u = s[1];
        C scaled, a;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        m = m + (g - m) * k.one_minus_b1;
        scaled = k.b2 * u;
        if (FLAVOR == KERAS) {
            a = fabs(g);
            u = scaled > a ? scaled : a;
            p = p - k.lr * m / ((u + k.eps) * k.bc1);
        } else {
            a = fabs(g) + k.eps;
            u = scaled > a ? scaled : a;
            p = p - k.step_size * (m / u);
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void adamax(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::AdamaxRule<C, FLAVOR>);
}
