// Generated from fusedopt/algorithms/stableadamw.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The rule of kernels/stableadamw.cu over q8 / q4 state (kernels/quantized.cuh).
#include "stableadamw.cu"
#include "quantized.cuh"

template <typename P, typename G, typename F, int MODE, int FLAVOR>
__global__ void stableadamw_quantized(FUSEDOPT_OPTIMIZER_PARAMS(P), const double* __restrict__ tensor_scalars,
                                      const float* __restrict__ maps) {
    using C = fusedopt::compute_t<P>;
    fusedopt::apply_quantized_chunk<P, G, F, MODE, 2, fusedopt::StableadamwRule<C, FLAVOR>>(
        table, n_tensors, chunk, fusedopt::Steps<C>{rows, control, flags, n_tensors}, maps,
        fusedopt::TensorScalars{tensor_scalars, n_tensors});
}
