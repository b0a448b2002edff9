// Generated from fusedopt/algorithms/adan.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The rule of kernels/adan.cu over q8 / q4 state (kernels/quantized.cuh).
#include "adan.cu"
#include "quantized.cuh"

template <typename P, typename G, typename F, int MODE, int FLAVOR>
__global__ void adan_quantized(FUSEDOPT_QUANTIZED_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY_QUANTIZED(P, G, F, MODE, 4, fusedopt::AdanRule<C, FLAVOR>);
}
