// Generated from fusedopt/algorithms/muon.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The rule of kernels/muon_momentum.cu over q8 / q4 state (kernels/quantized.cuh), its output
// u (float32) in the param's row of the launch table: the pass never reads or changes
// the param, and u is not state (fusedopt/backends/cuda/quantized.py OUTPUTS).
// P is the output's type: float, the one param dtype built.
#include "muon_momentum.cu"
#include "quantized.cuh"

namespace fusedopt {

// MuonMomentumRule with u in the param's place and the coded slots in s.
template <typename C, int FLAVOR, int NESTEROV>
struct MuonMomentumOutputRule {
    MuonMomentumRule<C, FLAVOR, NESTEROV> rule;

    static constexpr int n_scalars = MuonMomentumRule<C, FLAVOR, NESTEROV>::n_scalars;
    static FUSEDOPT_DEVICE MuonMomentumOutputRule from(const C* row) { return {MuonMomentumRule<C, FLAVOR, NESTEROV>::from(row)}; }

    FUSEDOPT_DEVICE void operator()(C& u, C g, C* s) const {
        C p = C(0);  // unread, unchanged
        C all[2] = {s[0], C(0)};
        rule(p, g, all);
        s[0] = all[0];
        u = all[1];
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename F, int MODE, int FLAVOR, int NESTEROV>
__global__ void muon_momentum_quantized(FUSEDOPT_QUANTIZED_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY_QUANTIZED(P, G, F, MODE, 1, fusedopt::MuonMomentumOutputRule<C, FLAVOR, NESTEROV>);
}
