// Adadelta in one pass: read param, grad and the two running averages, write them back.
//
// Slots: s[0] = Eg, the mean square gradient; s[1] = Ed, the mean square update.
//   Eg = rho Eg + (1 - rho) g^2
//   d  = sqrt(Ed + eps) / sqrt(Eg + eps) * g   (Keras multiplies by g before dividing)
//   Ed = rho Ed + (1 - rho) d^2
//   theta -= lr d
// The two conventions share the formula; only the weight decay and the rounding order differ.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F>
struct AdadeltaRule {
    Decay<C> decay;
    C rho, one_minus_rho, eps;

    static constexpr int n_scalars = 6;
    static FUSEDOPT_DEVICE AdadeltaRule from(const C* h) {
        return {{h[0], h[1], h[2]}, h[3], h[4], h[5]};
    }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& eg = s[0];
        C& ed = s[1];
        eg = rho * eg + one_minus_rho * (g * g);
        const C d = F == KERAS ? sqrt(ed + eps) * g / sqrt(eg + eps)
                               : sqrt(ed + eps) / sqrt(eg + eps) * g;
        ed = rho * ed + one_minus_rho * (d * d);
        p = p - decay.lr * d;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int F>
__global__ void adadelta(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::AdadeltaRule<C, F>);
}
