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

template <typename T, int F, int MOMENTUM, int NESTEROV>
__global__ void sgd(const long long* __restrict__ table, int n_tensors, long long chunk,
                    fusedopt::compute_t<T> lr, fusedopt::compute_t<T> wd,
                    fusedopt::compute_t<T> wd_factor, fusedopt::compute_t<T> momentum,
                    fusedopt::compute_t<T> grad_scale) {
    using C = fusedopt::compute_t<T>;
    const fusedopt::SgdRule<C, F, MOMENTUM, NESTEROV> rule{{lr, wd, wd_factor}, momentum,
                                                          grad_scale};
    fusedopt::apply_chunk<T, MOMENTUM ? 1 : 0>(table, n_tensors, chunk, rule);
}
