// Generated from fusedopt/algorithms/rmsprop.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// RMSprop, plain, centered and/or with momentum (Hinton, 2012; Graves, 2013).
//
// Slots, in order: ``velocity`` (the mean square v), ``momentum`` if the variant uses
// momentum, ``average_gradient`` (gbar) if centered. Both conventions::
//
//     v = rho v + (1 - rho) g^2;  centered: gbar moves toward g by (1 - rho), ms = v - gbar^2,
//     else ms = v
//
// Keras (flavor KERAS), epsilon inside the root::
//
//     inc = lr g / sqrt(ms + eps);  momentum: mom = mu mom + inc, theta -= mom; else theta -= inc
//
// torch (flavor TORCH_L2), epsilon outside::
//
//     avg = sqrt(ms) + eps;  momentum: b = mu b + g / avg, theta -= lr b; else theta -= lr g / avg
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct RmspropScalars {
    C lr, wd, wd_factor, rho, one_minus_rho, momentum, eps;
};

template <typename C, int FLAVOR, int USE_MOMENTUM, int CENTERED>
struct RmspropRule {
    RmspropScalars<C> k;

    static constexpr int n_scalars = 7;
    static FUSEDOPT_DEVICE RmspropRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C spare = C(0);  // a slot the variant has not: read as 0, unstored
        C& velocity = s[0];
        C& momentum = USE_MOMENTUM ? s[1] : spare;
        C& average_gradient = CENTERED ? s[1 + (USE_MOMENTUM ? 1 : 0)] : spare;
        C ms, inc, avg;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        velocity = k.rho * velocity + k.one_minus_rho * (g * g);
        ms = velocity;
        if (CENTERED) {
            if (FLAVOR == KERAS) {
                average_gradient = k.rho * average_gradient + k.one_minus_rho * g;
            } else {
                average_gradient = average_gradient + k.one_minus_rho * (g - average_gradient);
            }
            ms = velocity - average_gradient * average_gradient;
        }
        if (FLAVOR == KERAS) {
            inc = k.lr * g / sqrt(ms + k.eps);
            if (USE_MOMENTUM) {
                momentum = k.momentum * momentum + inc;
                p = p - momentum;
            } else {
                p = p - inc;
            }
        } else {
            avg = sqrt(ms) + k.eps;
            if (USE_MOMENTUM) {
                momentum = k.momentum * momentum + g / avg;
                p = p - k.lr * momentum;
            } else {
                p = p - k.lr * (g / avg);
            }
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR, int USE_MOMENTUM, int CENTERED>
__global__ void rmsprop(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 1 + (USE_MOMENTUM ? 1 : 0) + (CENTERED ? 1 : 0), fusedopt::RmspropRule<C, FLAVOR, USE_MOMENTUM, CENTERED>);
}
