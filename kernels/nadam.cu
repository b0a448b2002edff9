// Generated from fusedopt/algorithms/nadam.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Nadam, Adam with Nesterov momentum (Dozat, 2016), in Keras' and torch's forms.
//
// The momentum schedule ``mu_t = b1 (1 - 0.5 * 0.96^(t psi))`` (psi = 1 in Keras,
// ``momentum_decay`` in torch) and its running product ``P_t = mu_1 ... mu_t`` are functions of
// the step, computed on the host::
//
//     m += (g - m)(1 - b1);  v as Adam's
//     c_m = mu_(t+1) / (1 - P_t mu_(t+1)),  c_g = (1 - mu_t) / (1 - P_t)
//     Keras:  theta -= (c_m m + c_g g) lr / (sqrt(v / (1 - b2^t)) + eps)
//     torch:  d = sqrt(v / (1 - b2^t)) + eps;  theta -= lr c_g g / d;  theta -= lr c_m m / d
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct NadamScalars {
    C lr, wd, wd_factor, b2, one_minus_b1, one_minus_b2, eps, bc2, c_m, c_g;
};

template <typename C, int FLAVOR>
struct NadamRule {
    NadamScalars<C> k;

    static constexpr int n_scalars = 10;
    static FUSEDOPT_DEVICE NadamRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C& v = s[1];
        C d;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        m = m + (g - m) * k.one_minus_b1;
        if (FLAVOR == KERAS) {
            v = v + (g * g - v) * k.one_minus_b2;
            p = p - (k.c_m * m + k.c_g * g) * k.lr / (sqrt(v / k.bc2) + k.eps);
        } else {
            v = k.b2 * v + k.one_minus_b2 * (g * g);
            d = sqrt(v / k.bc2) + k.eps;
            p = p - k.c_g * (g / d);
            p = p - k.c_m * (m / d);
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void nadam(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::NadamRule<C, FLAVOR>);
}
