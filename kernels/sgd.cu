// SGD, with or without (Nesterov) momentum, in one pass: read param, grad (and the
// momentum buffer), write them back.
//
// Keras (F == KERAS):   m = mu m - lr g;  theta += m, or with NESTEROV theta += mu m - lr g;
//                       without momentum theta -= lr g
// PyTorch (F != KERAS): b = mu b + c g;  theta -= lr (NESTEROV ? g + mu b : b);
//                       without momentum theta -= lr g
// torch's buffer is b = g on its first step and b = mu b + (1 - dampening) g after. The buffer
// starts at zero, so c = 1 on the first step makes mu * 0 + 1 * g == g exactly; the host passes
// c = 1 - dampening after that, and the kernel never branches on the step.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F, int MOMENTUM, int NESTEROV>
struct SgdRule {
    Decay<C> decay;
    C momentum, grad_scale;

    static constexpr int n_scalars = 5;
    static FUSEDOPT_DEVICE SgdRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4]};
    }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        if (!MOMENTUM) {
            p = p - decay.lr * g;
            return;
        }
        C& m = s[0];
        if (F == KERAS) {
            m = m * momentum - g * decay.lr;
            p = NESTEROV ? p + (m * momentum - g * decay.lr) : p + m;
        } else {
            m = m * momentum + grad_scale * g;
            p = p - decay.lr * (NESTEROV ? g + momentum * m : m);
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int F, int MOMENTUM, int NESTEROV>
__global__ void sgd(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, MOMENTUM ? 1 : 0, fusedopt::SgdRule<C, F, MOMENTUM, NESTEROV>);
}
