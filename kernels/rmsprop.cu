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

    static constexpr int n_scalars = 7;
    static FUSEDOPT_DEVICE RmspropRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4], h[5], h[6]};
    }

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

template <typename P, typename G, typename S, int MODE, int F, int MOMENTUM, int CENTERED>
__global__ void rmsprop(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 1 + MOMENTUM + CENTERED, fusedopt::RmspropRule<C, F, MOMENTUM, CENTERED>);
}
