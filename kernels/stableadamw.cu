// Generated from fusedopt/algorithms/stableadamw.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// StableAdamW, AdamW whose learning rate is clipped per tensor by the RMS of g^2 / v
// (Wortsman et al., 2023, https://arxiv.org/abs/2304.13013), as torch-optimi 0.3.3's
// ``optimi.StableAdamW`` has it.
//
//     b1_hat = (b1^t - b1) / (b1^t - 1), b2_hat likewise   (the debiased betas)
//     m = lerp(m, g, 1 - b1_hat);  v = b2_hat v + (1 - b2_hat) g^2
//     lr_t = lr / max(1, sqrt(mean(g^2 / max(v, eps^2))))           (one per tensor)
//     theta *= 1 - lr_t wd          (decouple_lr: 1 - lr_t / max_lr * wd)
//     theta -= lr_t m / (sqrt(v) + eps)
//
// The Keras convention keeps every formula but weight decay, which is Keras' own for every
// optimizer: ``theta -= theta * wd * lr`` first, with the scheduled (unclipped) lr.
//
// A step is two passes over memory (besides the grad pre-pass when clipping by norm): the
// reduction phase (fusedopt/engine/reductions.py) reads g and v and sums g^2 / max(v_new,
// eps^2) per tensor, v_new recomputed, nothing written; the element pass is AdamW's, with
// ``lr_t`` and ``decay`` one scalar per tensor. In float32: 8 + 28 = 36 bytes per element,
// the fewest any StableAdamW step can move: the element pass must read theta, g, m, v and
// write theta, m, v (28, as AdamW), and every element's new v is needed before the first
// theta is written, which takes one more read of g and v (8) or, writing v in the first
// pass instead, one more write and read of v and the same 36.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
// Then the per-tensor ones, made from the reduction phase's sums on the device.
template <typename C>
struct StableadamwScalars {
    C lr, wd, wd_factor, b1_comp, b1_hat, lerp_low, b2_hat, b2_comp, eps, eps_sq, wd_per_lr, lr_t, decay;
};

template <typename C, int FLAVOR>
struct StableadamwRule {
    StableadamwScalars<C> k;

    static constexpr int n_scalars = 11;
    static FUSEDOPT_DEVICE StableadamwRule from(const C* row, const double* tensor, int stride) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], C(tensor[0]), C(tensor[1 * stride])}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C& v = s[1];
        if (FLAVOR == KERAS) {
            if (FLAVOR == TORCH_L2) {
                if (k.wd != C(0)) {
                    g = g + k.wd * p;
                }
            } else {
                p = p * k.wd_factor;
            }
        } else {
            p = p * k.decay;
        }
        m = k.lerp_low > C(0) ? m + k.b1_comp * (g - m) : g - (g - m) * k.b1_hat;
        v = v * k.b2_hat + k.b2_comp * g * g;
        p = p - k.lr_t * (m / (sqrt(v) + k.eps));
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void stableadamw(FUSEDOPT_OPTIMIZER_PARAMS(P), const double* __restrict__ tensor_scalars) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY_PER_TENSOR(P, G, S, MODE, 2, fusedopt::StableadamwRule<C, FLAVOR>);
}
