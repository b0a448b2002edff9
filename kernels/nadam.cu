// Nadam (Adam with Nesterov momentum, Dozat 2016) in one pass: param, grad, m, v.
//
// Both conventions share the moments:  m += (g - m)(1 - b1);  v = b2 v + (1 - b2) g^2
// and differ in how the momentum schedule mu_t and its running product P_t enter:
// Keras (F == KERAS), mu_t = b1 (1 - 0.5 * 0.96^t):
//     theta -= lr (c_m m + c_g g) / (sqrt(v / bc2) + eps)
//     c_m = mu_{t+1} / (1 - P_{t+1}),  c_g = (1 - mu_t) / (1 - P_t)
// PyTorch (F != KERAS), mu_t = b1 (1 - 0.5 * 0.96^(t psi)), psi = momentum_decay:
//     d = sqrt(v / bc2) + eps;  theta -= c_g (g / d);  theta -= c_m (m / d)
//     c_g = lr (1 - mu_t) / (1 - P_t),  c_m = lr mu_{t+1} / (1 - P_{t+1})
// bc2 = 1 - b2^t; the schedule and its product are per step, computed on the host in
// double (fusedopt/algorithms/registry.py), so nothing but m and v is kept per element.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F>
struct NadamRule {
    Decay<C> decay;
    C b2, one_minus_b1, one_minus_b2, eps, bc2, c_m, c_g;

    static constexpr int n_scalars = 10;
    static FUSEDOPT_DEVICE NadamRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4], h[5], h[6], h[7], h[8], h[9]};
    }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& m = s[0];
        C& v = s[1];
        m = m + (g - m) * one_minus_b1;
        if (F == KERAS) {
            v = v + (g * g - v) * one_minus_b2;
            const C m_hat = c_m * m + c_g * g;
            p = p - m_hat * decay.lr / (sqrt(v / bc2) + eps);
        } else {
            v = b2 * v + one_minus_b2 * (g * g);
            const C d = sqrt(v / bc2) + eps;
            p = p - c_g * (g / d);
            p = p - c_m * (m / d);
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int F>
__global__ void nadam(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::NadamRule<C, F>);
}
