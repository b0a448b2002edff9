// Adagrad in one pass: read param, grad and the accumulator, write them back.
//
// Both:                 acc += g^2   (acc starts at initial_accumulator_value)
// Keras (F == KERAS):   theta -= step g / sqrt(acc + eps)      (eps inside the root)
// PyTorch (F != KERAS): theta -= step (g / (sqrt(acc) + eps))  (eps outside the root)
// step is lr in Keras and torch's decayed lr / (1 + (t - 1) lr_decay), computed on the host.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F>
struct AdagradRule {
    Decay<C> decay;
    C eps, step;

    static constexpr int n_scalars = 5;
    static FUSEDOPT_DEVICE AdagradRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4]};
    }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& acc = s[0];
        acc = acc + g * g;
        if (F == KERAS) {
            p = p - step * g / sqrt(acc + eps);
        } else {
            p = p - step * (g / (sqrt(acc) + eps));
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int F>
__global__ void adagrad(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 1, fusedopt::AdagradRule<C, F>);
}
