// Adamax (Adam with the infinity norm) in one pass: read param, grad, m, u, write them back.
//
// Keras (F == KERAS):   m += (g - m)(1 - b1);  u = max(b2 u, |g|);
//                       theta -= lr m / ((u + eps)(1 - b1^t))
// PyTorch (F != KERAS): m = lerp(m, g, 1 - b1);  u = max(b2 u, |g| + eps)   (eps inside);
//                       theta -= clr * (m / u),  clr = lr / (1 - b1^t)
// bc1 = 1 - b1^t and clr are computed once per step on the host, in double.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F>
struct AdamaxRule {
    Decay<C> decay;
    C b2, one_minus_b1, eps, bc1, clr;

    static constexpr int n_scalars = 8;
    static FUSEDOPT_DEVICE AdamaxRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4], h[5], h[6], h[7]};
    }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& m = s[0];
        C& u = s[1];
        const C scaled = b2 * u;
        m = m + (g - m) * one_minus_b1;
        if (F == KERAS) {
            const C a = fabs(g);
            u = scaled > a ? scaled : a;
            p = p - decay.lr * m / ((u + eps) * bc1);
        } else {
            const C a = fabs(g) + eps;
            u = scaled > a ? scaled : a;
            p = p - clr * (m / u);
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int F>
__global__ void adamax(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::AdamaxRule<C, F>);
}
