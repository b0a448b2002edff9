// The benchmarks' traffic ceiling: an "optimizer" that moves exactly the bytes an optimizer
// with NS state slots moves (reads param, grad and every slot; writes param and every slot)
// through the same launch table and apply_chunk loop, with trivial math in between. The
// fused kernels' time over this kernel's time is what their math costs on top of memory.
//
// Rule: theta += a g;  s_k += a g  for every slot k  (the benchmark passes a = 0, so the
// values never drift, but the compiler cannot know that and must load and store them all).
#include "common.cuh"

namespace fusedopt {

template <typename C, int NS>
struct TrafficRule {
    C a;

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        const C step = a * g;
        p = p + step;
        for (int k = 0; k < NS; ++k) s[k] = s[k] + step;
    }
};

}  // namespace fusedopt

template <typename T, int NS>
__global__ void traffic(const long long* __restrict__ table, int n_tensors, long long chunk,
                        fusedopt::compute_t<T> a) {
    using C = fusedopt::compute_t<T>;
    const fusedopt::TrafficRule<C, NS> rule{a};
    fusedopt::apply_chunk<T, NS>(table, n_tensors, chunk, rule);
}
