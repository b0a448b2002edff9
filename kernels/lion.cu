// Generated from fusedopt/algorithms/lion.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Lion, evolved sign momentum (Chen et al., 2023).
//
//     c = b1 m + (1 - b1) g;  theta -= lr sign(c);  m = b2 m + (1 - b2) g
//
// torch has no Lion: the torch convention keeps the rule and decays the weights the paper's
// (and torch AdamW's) way, theta *= 1 - lr wd (flavor TORCH_DECOUPLED).
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct LionScalars {
    C lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2;
};

template <typename C, int FLAVOR>
struct LionRule {
    LionScalars<C> k;

    static constexpr int n_scalars = 7;
    static FUSEDOPT_DEVICE LionRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C c, step;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        c = m * k.b1 + g * k.one_minus_b1;
        step = c > C(0) ? k.lr : (c < C(0) ? -k.lr : c * k.lr);
        p = p - step;
        m = m * k.b2 + g * k.one_minus_b2;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void lion(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 1, fusedopt::LionRule<C, FLAVOR>);
}
