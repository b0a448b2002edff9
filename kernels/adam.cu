// Generated from fusedopt/algorithms/adam.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Adam, AdamW and AMSGrad (Kingma & Ba, 2015; Loshchilov & Hutter, 2019; Reddi et al., 2018).
//
// Keras (flavor KERAS)::
//
//     m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
//     theta -= m * step_size / (sqrt(v) + eps),    step_size = lr sqrt(1 - b2^t) / (1 - b1^t)
//
// torch (flavor TORCH_L2 or TORCH_DECOUPLED)::
//
//     m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
//     theta -= step_size * (m / (sqrt(v) / sqrt(1 - b2^t) + eps)),   step_size = lr / (1 - b1^t)
//
// With amsgrad, vhat = max(vhat, v) is kept and divides instead of v. Step sizes and bias
// corrections are computed once per step on the host, in float64.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct AdamScalars {
    C lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2, eps, step_size, bc2_sqrt;
};

template <typename C, int FLAVOR, int AMSGRAD>
struct AdamRule {
    AdamScalars<C> k;

    static constexpr int n_scalars = 10;
    static FUSEDOPT_DEVICE AdamRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C spare = C(0);  // a slot the variant has not: read as 0, unstored
        C& m = s[0];
        C& v = s[1];
        C& vhat = AMSGRAD ? s[2] : spare;
        C v_used;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        if (FLAVOR == KERAS) {
            m = m + (g - m) * k.one_minus_b1;
            v = v + (g * g - v) * k.one_minus_b2;
        } else {
            m = m + k.one_minus_b1 * (g - m);
            v = k.b2 * v + k.one_minus_b2 * (g * g);
        }
        v_used = v;
        if (AMSGRAD) {
            vhat = vhat > v ? vhat : v;
            v_used = vhat;
        }
        if (FLAVOR == KERAS) {
            p = p - m * k.step_size / (sqrt(v_used) + k.eps);
        } else {
            p = p - k.step_size * (m / (sqrt(v_used) / k.bc2_sqrt + k.eps));
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR, int AMSGRAD>
__global__ void adam(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2 + (AMSGRAD ? 1 : 0), fusedopt::AdamRule<C, FLAVOR, AMSGRAD>);
}
