// Generated from fusedopt/algorithms/lamb.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// LAMB, Adam's update scaled per tensor by a trust ratio (You et al., 2020,
// https://arxiv.org/abs/1904.00962).
//
// Keras (``keras.optimizers.Lamb``; weight decay, when set, is Keras' own, applied first;
// ``1 - b^t`` in float32, as Keras computes it: :func:`keras_correction`)::
//
//     theta -= theta * wd * lr
//     m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
//     u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//     r = ||theta|| / ||u|| when both norms are > 0, else 1
//     theta -= r * lr * u
//
// torch convention (the paper's weight decay, inside the update and so inside ||u||)::
//
//     m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
//     u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * theta
//     theta -= r * lr * u
//
// The norms are of whole tensors, so a step is two passes over memory (besides the grad
// pre-pass when clipping by norm): the reduction phase (fusedopt/engine/reductions.py)
// reads theta, g, m and v and sums theta^2 and u^2 per tensor, recomputing the new moments
// without writing them; the element pass then recomputes them, writes them and steps theta
// with ``trust_lr = r * lr``, one scalar per tensor. In float32: 16 + 28 = 44 bytes per
// element. The fewest bytes any LAMB step can move is 40: theta is needed whole before its
// first write (its norm) and again to be updated, so it is read twice, and the update needs
// the new moments of every element before the first write, so they are either written by
// the first pass and read again (+8) or recomputed from g, m and v (+12). fusedopt
// recomputes: the reduction phase writes nothing, so every storage (stochastic rounding,
// Kahan, masters) keeps the one element pass it is checked in, and nothing changes before
// the step's last check.
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
// Then the per-tensor ones, made from the reduction phase's sums on the device.
template <typename C>
struct LambScalars {
    C lr, wd, wd_factor, b2, one_minus_b1, one_minus_b2, bc1, bc2, eps, trust_lr;
};

template <typename C, int FLAVOR>
struct LambRule {
    LambScalars<C> k;

    static constexpr int n_scalars = 9;
    static FUSEDOPT_DEVICE LambRule from(const C* row, const double* tensor, int stride) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], C(tensor[0])}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C& v = s[1];
        C u;
        if (FLAVOR == KERAS) {
            if (FLAVOR == TORCH_L2) {
                if (k.wd != C(0)) {
                    g = g + k.wd * p;
                }
            } else {
                p = p * k.wd_factor;
            }
            m = m + (g - m) * k.one_minus_b1;
            v = v + (g * g - v) * k.one_minus_b2;
            u = m / k.bc1 / (sqrt(v / k.bc2) + k.eps);
        } else {
            m = m + k.one_minus_b1 * (g - m);
            v = k.b2 * v + k.one_minus_b2 * (g * g);
            u = m / k.bc1 / (sqrt(v / k.bc2) + k.eps) + k.wd * p;
        }
        p = p - k.trust_lr * u;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void lamb(FUSEDOPT_OPTIMIZER_PARAMS(P), const double* __restrict__ tensor_scalars) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY_PER_TENSOR(P, G, S, MODE, 2, fusedopt::LambRule<C, FLAVOR>);
}
