// The benchmarks' traffic ceiling: an "optimizer" that moves exactly the bytes an optimizer
// with NS state slots and the same storage moves (reads param, grad, every slot and the
// master slot; writes param, every slot and the master slot) through the same launch table,
// apply_chunk loop and load/store helpers, with trivial math in between. The fused
// kernels' time over this kernel's time is what their math costs on top of memory.
//
// Rule: theta += a g;  s_k += a g  for every slot k  (the benchmark passes a = 0, so the
// values never drift, but the compiler cannot know that and must load and store them all).
#include "common.cuh"

namespace fusedopt {

template <typename C, int NS>
struct TrafficRule {
    C a;

    static constexpr int n_scalars = 1;
    static FUSEDOPT_DEVICE TrafficRule from(const C* h) { return {h[0]}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        const C step = a * g;
        p = p + step;
        for (int k = 0; k < NS; ++k) s[k] = s[k] + step;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int NS>
__global__ void traffic(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, NS, fusedopt::TrafficRule<C, NS>);
}
