// RMSprop, plain, centered and/or with momentum, in one pass: read param, grad, the mean
// square (and the momentum buffer, the mean gradient), write them back.
//
// Slots in order: s[0] = v, the mean square; s[1] = the momentum buffer if MOMENTUM;
// then the mean gradient gbar if CENTERED.
// Both:                 v = rho v + (1 - rho) g^2;  CENTERED: gbar moves toward g by (1 - rho),
//                       ms = v - gbar^2, else ms = v
// Keras (F == KERAS):   inc = lr g / sqrt(ms + eps)          (eps inside the root)
//                       MOMENTUM: mom = mu mom + inc; theta -= mom, else theta -= inc
// PyTorch (F != KERAS): avg = sqrt(ms) + eps                   (eps outside the root)
//                       MOMENTUM: b = mu b + g / avg; theta -= lr b, else theta -= lr g / avg
#include "common.cuh"

namespace fusedopt {

template <typename C, int F, int MOMENTUM, int CENTERED>
struct RmspropRule {
    Decay<C> decay;
    C rho, one_minus_rho, momentum, eps;

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& v = s[0];
        v = rho * v + one_minus_rho * (g * g);
        C ms = v;
        if (CENTERED) {
            C& gbar = s[1 + MOMENTUM];
            // torch moves gbar with lerp (gbar + w (g - gbar)); Keras with a weighted sum.
            gbar = F == KERAS ? rho * gbar + one_minus_rho * g : gbar + one_minus_rho * (g - gbar);
            ms = v - gbar * gbar;
        }
        if (F == KERAS) {
            const C inc = decay.lr * g / sqrt(ms + eps);
            if (MOMENTUM) {
                s[1] = momentum * s[1] + inc;
                p = p - s[1];
            } else {
                p = p - inc;
            }
        } else {
            const C avg = sqrt(ms) + eps;
            if (MOMENTUM) {
                s[1] = momentum * s[1] + g / avg;
                p = p - decay.lr * s[1];
            } else {
                p = p - decay.lr * (g / avg);
            }
        }
    }
};

}  // namespace fusedopt

template <typename T, int F, int MOMENTUM, int CENTERED>
__global__ void rmsprop(const long long* __restrict__ table, int n_tensors, long long chunk,
                        fusedopt::compute_t<T> lr, fusedopt::compute_t<T> wd,
                        fusedopt::compute_t<T> wd_factor, fusedopt::compute_t<T> rho,
                        fusedopt::compute_t<T> one_minus_rho, fusedopt::compute_t<T> momentum,
                        fusedopt::compute_t<T> eps) {
    using C = fusedopt::compute_t<T>;
    const fusedopt::RmspropRule<C, F, MOMENTUM, CENTERED> rule{{lr, wd, wd_factor}, rho,
                                                              one_minus_rho, momentum, eps};
    fusedopt::apply_chunk<T, 1 + MOMENTUM + CENTERED>(table, n_tensors, chunk, rule);
}
