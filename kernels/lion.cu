// Lion (EvoLved Sign Momentum, Chen et al. 2023) in one pass: param, grad, m.
//
//     c = b1 m + (1 - b1) g;   theta -= lr sign(c);   m = b2 m + (1 - b2) g
// sign(0) = 0 and sign(NaN) = NaN, as ops.sign / torch.sign. Both conventions run this
// rule; they differ only in the weight-decay flavour (Keras: theta -= theta wd lr,
// torch: theta *= 1 - lr wd, the decoupled decay of the Lion paper).
#include "common.cuh"

namespace fusedopt {

template <typename C, int F>
struct LionRule {
    Decay<C> decay;
    C b1, b2, one_minus_b1, one_minus_b2;

    static constexpr int n_scalars = 7;
    static FUSEDOPT_DEVICE LionRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4], h[5], h[6]};
    }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& m = s[0];
        const C c = m * b1 + g * one_minus_b1;
        // lr * sign(c) without a branch or a literal: +-lr exactly, and c * lr = +-0 or NaN.
        const C step = c > 0 ? decay.lr : (c < 0 ? -decay.lr : c * decay.lr);
        p = p - step;
        m = m * b2 + g * one_minus_b2;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int F>
__global__ void lion(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 1, fusedopt::LionRule<C, F>);
}
