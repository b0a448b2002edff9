// Generated from fusedopt/algorithms/asgd.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// ASGD, averaged stochastic gradient descent (Polyak & Juditsky, 1992), as torch.optim.ASGD
// has it (its single-tensor step).
//
// At 1-based step t, with eta_t the step size and mu_t the averaging weight::
//
//     theta *= 1 - lambd eta_t;  theta -= eta_t g
//     ax = theta if mu_t == 1 else ax + mu_t (theta - ax)
//     eta_1 = lr,  eta_t = lr / (1 + lambd lr (t - 1))^alpha
//     mu_1 = 1,    mu_t = 1 / max(1, t - 1 - t0)
//
// torch computes eta and mu at the end of each step and keeps them as float32 state; here they
// are host scalars of the step count, in float64 and (torch convention) rounded to float32 as
// torch's state rounds them, so that the state entries ``eta`` and ``mu`` of the torch door
// are derived, not stored. The lr they use is the step's: torch's lag one step behind an lr
// that changes between steps (a schedule), fusedopt's do not. Weight decay: L2 in torch
// (``g += wd theta`` first); Keras-style decoupled ``theta -= theta wd lr`` in the Keras
// convention.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct AsgdScalars {
    C lr, wd, wd_factor, eta, decay, mu;
};

template <typename C, int FLAVOR>
struct AsgdRule {
    AsgdScalars<C> k;

    static constexpr int n_scalars = 6;
    static FUSEDOPT_DEVICE AsgdRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& ax = s[0];
        if (FLAVOR == TORCH_L2) {
            if (k.wd != C(0)) {
                g = g + k.wd * p;
            }
        } else {
            p = p * k.wd_factor;
        }
        p = p * k.decay;
        p = p - k.eta * g;
        ax = k.mu == C(1) ? p : ax + (p - ax) * k.mu;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void asgd(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 1, fusedopt::AsgdRule<C, FLAVOR>);
}
