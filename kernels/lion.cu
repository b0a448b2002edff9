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

template <typename T, int F>
__global__ void lion(const long long* __restrict__ table, int n_tensors, long long chunk,
                     fusedopt::compute_t<T> lr, fusedopt::compute_t<T> wd,
                     fusedopt::compute_t<T> wd_factor, fusedopt::compute_t<T> b1,
                     fusedopt::compute_t<T> b2, fusedopt::compute_t<T> one_minus_b1,
                     fusedopt::compute_t<T> one_minus_b2) {
    using C = fusedopt::compute_t<T>;
    const fusedopt::LionRule<C, F> rule{{lr, wd, wd_factor}, b1, b2, one_minus_b1, one_minus_b2};
    fusedopt::apply_chunk<T, 1>(table, n_tensors, chunk, rule);
}
