// Generated from fusedopt/algorithms/sgd.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// SGD, with momentum and Nesterov momentum, in Keras' and torch's forms.
//
// Keras (flavor KERAS)::
//
//     m = momentum m - lr g;  theta += m       (nesterov: theta += momentum m - lr g)
//
// torch (flavor TORCH_L2)::
//
//     b = g at a param's first step, then b = momentum b + (1 - dampening) g
//     theta -= lr (g + momentum b if nesterov else b)
//
// Without momentum both are theta -= lr g, and the variant has no slot.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct SgdScalars {
    C lr, wd, wd_factor, momentum, grad_scale;
};

template <typename C, int FLAVOR, int USE_MOMENTUM, int NESTEROV>
struct SgdRule {
    SgdScalars<C> k;

    static constexpr int n_scalars = 5;
    static FUSEDOPT_DEVICE SgdRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C spare = C(0);  // a slot the variant has not: read as 0, unstored
        C& momentum = USE_MOMENTUM ? s[0] : spare;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        if (!USE_MOMENTUM) {
            p = p - k.lr * g;
        } else if (FLAVOR == KERAS) {
            momentum = momentum * k.momentum - g * k.lr;
            if (NESTEROV) {
                p = p + (momentum * k.momentum - g * k.lr);
            } else {
                p = p + momentum;
            }
        } else {
            momentum = momentum * k.momentum + k.grad_scale * g;
            if (NESTEROV) {
                p = p - k.lr * (g + k.momentum * momentum);
            } else {
                p = p - k.lr * momentum;
            }
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR, int USE_MOMENTUM, int NESTEROV>
__global__ void sgd(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, (USE_MOMENTUM ? 1 : 0), fusedopt::SgdRule<C, FLAVOR, USE_MOMENTUM, NESTEROV>);
}
