// Generated from fusedopt/algorithms/adadelta.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Adadelta (Zeiler, 2012).
//
// Both conventions::
//
//     E_g = rho E_g + (1 - rho) g^2;  d = sqrt(E_d + eps) / sqrt(E_g + eps) * g
//     E_d = rho E_d + (1 - rho) d^2;  theta -= lr d
//
// (Keras multiplies by g before dividing; torch after, as each library does.)
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct AdadeltaScalars {
    C lr, wd, wd_factor, rho, one_minus_rho, eps;
};

template <typename C, int FLAVOR>
struct AdadeltaRule {
    AdadeltaScalars<C> k;

    static constexpr int n_scalars = 6;
    static FUSEDOPT_DEVICE AdadeltaRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& accumulated_grad = s[0];
        C& accumulated_delta_var = s[1];
        C d;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        accumulated_grad = k.rho * accumulated_grad + k.one_minus_rho * (g * g);
        if (FLAVOR == KERAS) {
            d = sqrt(accumulated_delta_var + k.eps) * g / sqrt(accumulated_grad + k.eps);
        } else {
            d = sqrt(accumulated_delta_var + k.eps) / sqrt(accumulated_grad + k.eps) * g;
        }
        accumulated_delta_var = k.rho * accumulated_delta_var + k.one_minus_rho * (d * d);
        p = p - k.lr * d;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void adadelta(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::AdadeltaRule<C, FLAVOR>);
}
