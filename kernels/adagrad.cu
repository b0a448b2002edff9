// Generated from fusedopt/algorithms/adagrad.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Adagrad (Duchi et al., 2011).
//
// Keras (flavor KERAS): ``acc += g^2;  theta -= lr g / sqrt(acc + eps)``.
// torch (flavor TORCH_L2): ``acc += g^2;  theta -= clr (g / (sqrt(acc) + eps))`` with
// ``clr = lr / (1 + (t - 1) lr_decay)``. The accumulator starts at
// ``initial_accumulator_value``.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct AdagradScalars {
    C lr, wd, wd_factor, eps, step_size;
};

template <typename C, int FLAVOR>
struct AdagradRule {
    AdagradScalars<C> k;

    static constexpr int n_scalars = 5;
    static FUSEDOPT_DEVICE AdagradRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& accumulator = s[0];
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        accumulator = accumulator + g * g;
        if (FLAVOR == KERAS) {
            p = p - k.step_size * g / sqrt(accumulator + k.eps);
        } else {
            p = p - k.step_size * (g / (sqrt(accumulator) + k.eps));
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void adagrad(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 1, fusedopt::AdagradRule<C, FLAVOR>);
}
