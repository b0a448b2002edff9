// Generated from fusedopt/algorithms/rprop.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Rprop, resilient backpropagation (Riedmiller & Braun, 1993), as torch.optim.Rprop has it.
//
// Each element keeps its own step size and the grad it saw last::
//
//     s = g * prev
//     step_size = clamp(step_size * (eta_plus if s > 0 else eta_minus if s < 0 else 1),
//                       min_step_size, max_step_size)
//     g = 0 where s < 0                    # a sign change: no move, and no memory of it
//     theta -= sign(g) * step_size;  prev = g
//
// A NaN grad moves nothing and leaves the step size as it was (torch's ``sign(NaN)`` is 0), and
// is kept as ``prev``, as torch keeps it.
// The step size starts at the learning rate: the rule takes ``lr`` itself at a param's first
// step (``first``, a host scalar), so the slot needs no initial value of its own. torch's Rprop
// has no weight decay; the Keras convention decays as Keras' optimizers do,
// ``theta -= theta * wd * lr``, before the update.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct RpropScalars {
    C lr, wd, wd_factor, eta_minus, eta_plus, min_step_size, max_step_size, first, zero;
};

template <typename C, int FLAVOR>
struct RpropRule {
    RpropScalars<C> k;

    static constexpr int n_scalars = 9;
    static FUSEDOPT_DEVICE RpropRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& prev = s[0];
        C& step_size = s[1];
        C size, agree, step;
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        size = k.first > C(0) ? k.lr : step_size;
        agree = g * prev;
        size = agree > C(0) ? size * k.eta_plus : (agree < C(0) ? size * k.eta_minus : size);
        step_size = size < k.min_step_size ? k.min_step_size : (size > k.max_step_size ? k.max_step_size : size);
        prev = agree < C(0) ? k.zero : g;
        step = prev > C(0) ? step_size : (prev < C(0) ? -step_size : k.zero);
        p = p - step;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void rprop(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::RpropRule<C, FLAVOR>);
}
