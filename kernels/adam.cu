// Adam, AdamW and AMSGrad in one pass: read param, grad, m, v (and vhat), write them back.
//
// Keras (F == KERAS):  m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);
//                      theta -= m * step / (sqrt(v) + eps),  step = lr sqrt(1 - b2^t) / (1 - b1^t)
// PyTorch (F != KERAS): m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2;
//                      theta -= step * (m / (sqrt(v) / bc2_sqrt + eps)),  step = lr / (1 - b1^t)
// AMSGRAD keeps vhat = max(vhat, v) in slot 2 and divides by it instead of v.
// Step sizes and bias corrections are computed once per step on the host, in double.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F, int AMSGRAD>
struct AdamRule {
    Decay<C> decay;
    C b1, b2, one_minus_b1, one_minus_b2, eps, step, bc2_sqrt;

    static constexpr int n_scalars = 10;
    static FUSEDOPT_DEVICE AdamRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4], h[5], h[6], h[7], h[8], h[9]};
    }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& m = s[0];
        C& v = s[1];
        if (F == KERAS) {
            m = m + (g - m) * one_minus_b1;
            v = v + (g * g - v) * one_minus_b2;
        } else {
            m = m + one_minus_b1 * (g - m);
            v = b2 * v + one_minus_b2 * (g * g);
        }
        C v_used = v;
        if (AMSGRAD) {
            s[2] = s[2] > v ? s[2] : v;
            v_used = s[2];
        }
        if (F == KERAS) {
            p = p - m * step / (sqrt(v_used) + eps);
        } else {
            p = p - step * (m / (sqrt(v_used) / bc2_sqrt + eps));
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int F, int AMSGRAD>
__global__ void adam(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, AMSGRAD ? 3 : 2, fusedopt::AdamRule<C, F, AMSGRAD>);
}
