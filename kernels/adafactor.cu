// Generated from fusedopt/algorithms/adafactor.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Adafactor, a second moment factored into row and column averages (Shazeer & Stern, 2018,
// https://arxiv.org/abs/1804.04235), as ``torch.optim.Adafactor`` (torch 2.13) and
// ``keras.optimizers.Adafactor`` (Keras 3.15) have it: they differ, and each convention
// follows its own.
//
// For a param of rank >= 2 seen as slices (B, R, C) the state is a row factor r (R per slice)
// and a column factor c (C per slice); a param of rank < 2 keeps its whole second moment v.
// With t the 1-based step and w = t^beta_2_decay::
//
//     torch:  rho = min(lr, 1/sqrt(t));  alpha = max(eps2, RMS(theta)) * rho
//             theta *= 1 - lr * wd
//             r = lerp(r, mean_c(g^2), w);  c = lerp(c, mean_r(g^2), w)
//             v_hat = r c / max(mean_r(r), eps1)       (rank < 2: v = lerp(v, g^2, w))
//             u = g / sqrt(max(v_hat, eps1^2))
//             theta -= alpha / max(1, RMS(u) / d) * u
//     Keras:  theta -= theta * wd * lr  (Keras' decay, first; the RMS below sees it)
//             beta = 1 - t^beta_2_decay (float32);  s = g^2 + eps1
//             r = beta r + (1 - beta) mean_c(s);  c likewise;  v_hat = (r / mean_r(r)) c
//             (rank < 2: v = beta v + (1 - beta) s);  u = g / sqrt(v_hat)
//             theta -= alpha / max(1, RMS(u) / clip_threshold) * u
//
// A step of a factored param is three passes (fusedopt/engine/reductions.py): the factor pass
// reads g and sums s along rows and columns (r and c, R + C values per slice, are then moved:
// on the host by the CPU backend, by the summing thread on CUDA, kernels/factored.cuh); the
// reduction pass reads theta and g and sums theta^2 and u^2
// (u from the new factors); the element pass reads theta and g and writes theta. In float32:
// 4 + 8 + 12 = 24 bytes per element, the fewest any Adafactor step can move: every u needs
// the factors, which need every g, so g is read before any u exists; RMS(u) needs every u
// before the first theta is written, and storing u (4 + 4) costs more than reading g again
// (4); theta's RMS needs theta whole before its first write, so theta is read twice and
// written once (12). A param of rank < 2 moves 12 + 20 = 32 (theta, g and v read for the
// sums, then theta, g, v read and theta, v written): the new v of every element is needed
// before the first theta is written, as StableAdamW's is.
#include "factored.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
// Then the per-tensor ones, made from the reduction phase's sums on the device.
template <typename C>
struct AdafactorScalars {
    C lr, wd, wd_factor, w, one_minus_w, half, one, eps1, eps1_sq, rho, eps2, clip, step_lr, alpha, clip_ratio;
};

template <typename C, int FLAVOR>
struct AdafactorRule {
    AdafactorScalars<C> k;

    static constexpr int n_scalars = 12;
    static FUSEDOPT_DEVICE AdafactorRule from(const C* row, const double* tensor, int stride) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11], C(tensor[0]), C(tensor[1 * stride]), C(tensor[2 * stride])}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& r = s[0];
        C& c = s[1];
        C& v = s[2];
        C u;
        if (FLAVOR == KERAS) {
            if (FLAVOR == TORCH_L2) {
                if (k.wd != C(0)) {
                    g = g + k.wd * p;
                }
            } else {
                p = p * k.wd_factor;
            }
            p = p - k.alpha * (g / sqrt(v) / k.clip_ratio);
        } else {
            u = g * (k.one / sqrt(v > k.eps1_sq ? v : k.eps1_sq));
            p = p * k.wd_factor;
            p = p - k.step_lr * u;
        }
    }
};

// The factored moment (kernels/factored.cuh): square, moment and estimate of the
// algorithm, on one value each.
template <typename C, int FLAVOR>
struct AdafactorMoment {
    AdafactorScalars<C> k;

    static FUSEDOPT_DEVICE AdafactorMoment from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11], C(0), C(0), C(0)}}; }

    FUSEDOPT_DEVICE C square(C g) const {
        C sq;
        if (FLAVOR == KERAS) {
            sq = g * g + k.eps1;
        } else {
            sq = g * g;
        }
        return sq;
    }
    FUSEDOPT_DEVICE C moment(C old, C fresh) const {
        C m;
        if (FLAVOR == KERAS) {
            m = k.one_minus_w * old + k.w * fresh;
        } else {
            m = k.w < k.half ? old + k.w * (fresh - old) : fresh - (fresh - old) * k.one_minus_w;
        }
        return m;
    }
    FUSEDOPT_DEVICE C estimate(C r, C c, C m) const {
        C e;
        if (FLAVOR == KERAS) {
            e = r / m * c;
        } else {
            e = r * c / m;
        }
        return e;
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void adafactor(FUSEDOPT_FACTORED_PARAMS(P),
                    const fusedopt::compute_t<P>* __restrict__ denominators,
                    const double* __restrict__ tensor_scalars) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY_FACTORED(P, G, S, MODE, fusedopt::AdafactorRule<C, FLAVOR>, fusedopt::AdafactorMoment<C, FLAVOR>);
}

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void adafactor_factor(FUSEDOPT_FACTORED_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_MOVE_FACTORS(P, G, S, MODE, fusedopt::AdafactorMoment<C, FLAVOR>);
}

template <typename P, typename G, typename S, int MODE, int FLAVOR>
__global__ void adafactor_means(FUSEDOPT_FACTORED_PARAMS(P), double* __restrict__ means) {
    (void)rows;
    (void)control;
    (void)flags;
    fusedopt::slice_means<P, G, S, MODE>(table, n_tensors, chunk, shapes, means);
}
