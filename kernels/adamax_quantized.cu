// Generated from fusedopt/algorithms/adamax.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The rule of kernels/adamax.cu over q8 / q4 state (kernels/quantized.cuh).
#include "adamax.cu"
#include "quantized.cuh"

template <typename P, typename G, typename F, int MODE, int FLAVOR>
__global__ void adamax_quantized(FUSEDOPT_QUANTIZED_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY_QUANTIZED(P, G, F, MODE, 2, fusedopt::AdamaxRule<C, FLAVOR>);
}
