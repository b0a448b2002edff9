// Generated from fusedopt/algorithms/rmsprop.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The rule of kernels/rmsprop.cu over q8 / q4 state (kernels/quantized.cuh).
#include "rmsprop.cu"
#include "quantized.cuh"

template <typename P, typename G, typename F, int MODE, int FLAVOR, int USE_MOMENTUM, int CENTERED>
__global__ void rmsprop_quantized(FUSEDOPT_QUANTIZED_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY_QUANTIZED(P, G, F, MODE, 1 + (USE_MOMENTUM ? 1 : 0) + (CENTERED ? 1 : 0), fusedopt::RmspropRule<C, FLAVOR, USE_MOMENTUM, CENTERED>);
}
