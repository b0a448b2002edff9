// Generated from fusedopt/algorithms/ftrl.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// FTRL-Proximal, follow the regularized leader (McMahan et al., 2013), as keras.optimizers.Ftrl
// has it.
//
//     n = acc + g^2;  q = -learning_rate_power
//     linear += g + 2 l2_shrinkage theta - (n^q - acc^q) / lr * theta
//     theta = (clip(linear, -l1, l1) - linear) / (n^q / lr + 2 (l2 + beta / (2 lr)));  acc = n
//
// The powers are taken in the compute type, as Keras takes them in the variable's dtype: for
// the default q = 1/2 square roots (the ``sqrt_power`` variant: correctly rounded, and
// cheaper than a power), else ``power``. The accumulator starts at
// ``initial_accumulator_value`` and the linear term at 0: every slot starts at the
// accumulator's value (one initial value for all, as stored: a 16-bit state holds it rounded,
// as Keras' variable of that dtype would), and the rule takes 0 for the linear term at the
// first step (``first``, a host scalar) instead of the slot's. torch has no Ftrl: the torch
// door takes TensorFlow's raw-op names (``lr``, ``lr_power``, ``l1``, ``l2``,
// ``l2_shrinkage``) for Keras' arguments and runs Keras' rule, weight decay included.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct FtrlScalars {
    C lr, wd, wd_factor, power, first, zero, l1, l2_twice, shrinkage;
};

template <typename C, int FLAVOR, int SQRT_POWER>
struct FtrlRule {
    FtrlScalars<C> k;

    static constexpr int n_scalars = 9;
    static FUSEDOPT_DEVICE FtrlRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& accumulator = s[0];
        C& linear = s[1];
        C before, grown, sigma, quadratic, clipped;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        before = accumulator;
        accumulator = before + g * g;
        linear = k.first > C(0) ? k.zero : linear;
        if (SQRT_POWER) {
            grown = sqrt(accumulator);
            sigma = (grown - sqrt(before)) / k.lr;
        } else {
            grown = pow(C(accumulator), C(k.power));
            sigma = (grown - pow(C(before), C(k.power))) / k.lr;
        }
        linear = linear + (g + k.shrinkage * p - sigma * p);
        quadratic = grown / k.lr + k.l2_twice;
        clipped = linear < -k.l1 ? -k.l1 : (linear > k.l1 ? k.l1 : linear);
        p = (clipped - linear) / quadratic;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR, int SQRT_POWER>
__global__ void ftrl(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::FtrlRule<C, FLAVOR, SQRT_POWER>);
}
