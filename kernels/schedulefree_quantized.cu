// Generated from fusedopt/algorithms/schedulefree.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The rule of kernels/schedulefree.cu over q8 / q4 state (kernels/quantized.cuh).
#include "schedulefree.cu"
#include "quantized.cuh"

template <typename P, typename G, typename F, int MODE, int FLAVOR, int STEPPING, int ADAPTIVE, int TO_EVAL, int SAVED>
__global__ void schedulefree_quantized(FUSEDOPT_QUANTIZED_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    constexpr int FLOATS = (STEPPING ? (1 << (0)) : 0) | (SAVED ? (1 << ((STEPPING ? 1 : 0) + (ADAPTIVE ? 1 : 0))) : 0);  // float32 slots
    FUSEDOPT_APPLY_QUANTIZED_FLOATS(P, G, F, MODE, (STEPPING ? 1 : 0) + (ADAPTIVE ? 1 : 0) + (SAVED ? 1 : 0), FLOATS, fusedopt::SchedulefreeRule<C, FLAVOR, STEPPING, ADAPTIVE, TO_EVAL, SAVED>);
}
