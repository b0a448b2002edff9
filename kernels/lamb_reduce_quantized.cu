// Generated from fusedopt/algorithms/lamb.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The reduction terms of kernels/lamb_reduce.cu over q8 / q4 state
// (kernels/quantized_reduce.cuh).
#include "lamb_reduce.cu"
#include "quantized_reduce.cuh"

template <typename P, typename G, typename F, int MODE, int FLAVOR>
__global__ void lamb_reduce_quantized(FUSEDOPT_QUANTIZED_REDUCE_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_REDUCE_QUANTIZED(P, G, F, MODE, 2, fusedopt::LambTerms<C, FLAVOR>);
}
