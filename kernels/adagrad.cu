// Adagrad in one pass: read param, grad and the accumulator, write them back.
//
// Both:                 acc += g^2   (acc starts at initial_accumulator_value)
// Keras (F == KERAS):   theta -= step g / sqrt(acc + eps)      (eps inside the root)
// PyTorch (F != KERAS): theta -= step (g / (sqrt(acc) + eps))  (eps outside the root)
// step is lr in Keras and torch's decayed lr / (1 + (t - 1) lr_decay), computed on the host.
#include "common.cuh"

namespace fusedopt {

template <typename C, int F>
struct AdagradRule {
    Decay<C> decay;
    C eps, step;

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        weight_decay<F>(p, g, decay);
        C& acc = s[0];
        acc = acc + g * g;
        if (F == KERAS) {
            p = p - step * g / sqrt(acc + eps);
        } else {
            p = p - step * (g / (sqrt(acc) + eps));
        }
    }
};

}  // namespace fusedopt

template <typename T, int F>
__global__ void adagrad(const long long* __restrict__ table, int n_tensors, long long chunk,
                        fusedopt::compute_t<T> lr, fusedopt::compute_t<T> wd,
                        fusedopt::compute_t<T> wd_factor, fusedopt::compute_t<T> eps,
                        fusedopt::compute_t<T> step) {
    using C = fusedopt::compute_t<T>;
    const fusedopt::AdagradRule<C, F> rule{{lr, wd, wd_factor}, eps, step};
    fusedopt::apply_chunk<T, 1>(table, n_tensors, chunk, rule);
}
