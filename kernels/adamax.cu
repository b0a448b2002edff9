// Adamax (Adam with the infinity norm) in one pass: read param, grad, m, u, write them back.
//
// Keras (F == KERAS):   m += (g - m)(1 - b1);  u = max(b2 u, |g|);
//                       theta -= lr m / ((u + eps)(1 - b1^t))
// PyTorch (F != KERAS): m = lerp(m, g, 1 - b1);  u = max(b2 u, |g| + eps)   (eps inside);
//                       theta -= clr * (m / u),  clr = lr / (1 - b1^t)
// bc1 = 1 - b1^t and clr are computed once per step on the host, in double.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F>
struct AdamaxRule {
    Decay<C> decay;
    C b2, one_minus_b1, eps, bc1, clr;

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& m = s[0];
        C& u = s[1];
        const C scaled = b2 * u;
        m = m + (g - m) * one_minus_b1;
        if (F == KERAS) {
            const C a = fabs(g);
            u = scaled > a ? scaled : a;
            p = p - decay.lr * m / ((u + eps) * bc1);
        } else {
            const C a = fabs(g) + eps;
            u = scaled > a ? scaled : a;
            p = p - clr * (m / u);
        }
    }
};

}  // namespace fusedopt

template <typename T, int F>
__global__ void adamax(const long long* __restrict__ table, int n_tensors, long long chunk,
                       fusedopt::compute_t<T> lr, fusedopt::compute_t<T> wd,
                       fusedopt::compute_t<T> wd_factor, fusedopt::compute_t<T> b2,
                       fusedopt::compute_t<T> one_minus_b1, fusedopt::compute_t<T> eps,
                       fusedopt::compute_t<T> bc1, fusedopt::compute_t<T> clr) {
    using C = fusedopt::compute_t<T>;
    const fusedopt::AdamaxRule<C, F> rule{{lr, wd, wd_factor}, b2, one_minus_b1, eps, bc1, clr};
    fusedopt::apply_chunk<T, 2>(table, n_tensors, chunk, rule);
}
