// The reduction phase of a factored moment (kernels/factored.cuh): the terms of the
// algorithm's reduction rule for each element, given its second-moment estimate, summed per
// block in double and combined per tensor as kernels/reduce.cuh's are (combine_sums).
#pragma once

#include "factored.cuh"
#include "reduce.cuh"

namespace fusedopt {

// The reduction phase: Terms (the algorithm's reduction rule, the estimate its third slot)
// summed over the block's chunk into partial, as reduce_chunk does.
template <typename Terms, typename C>
struct SumTerms {
    const Terms& terms;
    double acc[Terms::n_terms];
    FUSEDOPT_DEVICE void operator()(C& p, C g, C& v) {
        const C s[FACTORED_SLOTS] = {C(0), C(0), v};
        C out[Terms::n_terms];
        terms(p, g, s, out);
        for (int r = 0; r < Terms::n_terms; ++r) acc[r] += static_cast<double>(out[r]);
    }
};

template <typename P, typename G, typename S, int MODE, typename Terms, typename Moment>
FUSEDOPT_DEVICE void reduce_factored(const long long* table, int n_tensors, long long chunk,
                                     const Steps<compute_t<P>>& steps, const long long* shapes,
                                     const compute_t<P>* denominators, double* partial) {
    using C = compute_t<P>;
    static_assert(PlainFactored<P, G, S, MODE>::value, "factored moments are plain");
    const FactoredChunk<P, Moment> at =
        FactoredChunk<P, Moment>::of(table, n_tensors, chunk, shapes, denominators);
    const C* row = steps.row(at.t);
    const Terms terms = Terms::from(row);
    const Moment moment = Moment::from(row);
    SumTerms<Terms, C> visit{terms, {}};
    visit_chunk<P, false>(at.p, at.g, at.v, at.factored, at.estimates, moment, at.begin, at.end,
                          at.scale, at.limit, visit);
    store_block_sums<Terms::n_terms>(visit.acc, partial);
}

}  // namespace fusedopt

// The reduction phase's body: Terms, then Moment. Its parameters end in the denominators
// and the block sums' output.
#define FUSEDOPT_REDUCE_FACTORED(P, G, S, MODE, ...)                                       \
    fusedopt::reduce_factored<P, G, S, MODE, __VA_ARGS__>(                                  \
        table, n_tensors, chunk,                                                            \
        fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors}, shapes,   \
        denominators, partial)
