// Generated from fusedopt/algorithms/muon.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Muon: momentum, then each 2-D update orthogonalized by Newton-Schulz iterations, then the
// weight step (Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/; Liu et al.,
// 2025, https://arxiv.org/abs/2502.16982 for the update-RMS scaling).
//
// torch convention (``torch.optim.Muon``)::
//
//     m = lerp(m, g, 1 - mu);  u = lerp(g, m, mu) if nesterov else m
//     O = NS(u) in bfloat16, X / max(||X||_F, eps) first, (a, b, c) as given
//     theta *= 1 - lr * wd;  theta -= lr * s(shape) * O
//     s = sqrt(max(1, rows / cols)) ("original", the default) or 0.2 sqrt(max(rows, cols))
//     ("match_rms_adamw")
//
// Keras convention (``keras.optimizers.Muon`` on its 2-D variables)::
//
//     m = mu m + g;  u = g + mu m if nesterov else m
//     O = NS(u) in the variable's dtype, X / (||X||_F + 1e-7) first
//     theta -= theta * wd * lr;  theta -= lr * O * sqrt(max(rows, cols)) * rms_rate
//
// NS, ``steps`` times on X (transposed first when rows > cols): ``A = X X^T``,
// ``B = b A + c A A``, ``X = a X + B X``.
//
// A step is two element passes and a batched transform between them
// (fusedopt/engine/orthogonal.py): the momentum pass reads g and m and writes m and u (u
// into a stack of the tensor's shape); the transform runs on each stack, one batched matmul
// per product for every tensor of that shape; the weight pass reads the param and O and
// writes the param. In float32 the passes move 4 + 8 + 4 (g, m read and written, u written)
// and 12 (p read and written, O read) bytes per element, besides the param the first pass
// also reads and writes unchanged (the CPU loop stores every operand it loads: 8 more).
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct MuonMomentumScalars {
    C lr, wd, wd_factor, w, mu, one, mu_minus_one, w_low, mu_low;
};

template <typename C, int FLAVOR, int NESTEROV>
struct MuonMomentumRule {
    MuonMomentumScalars<C> k;

    static constexpr int n_scalars = 9;
    static FUSEDOPT_DEVICE MuonMomentumRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C& m = s[0];
        C& u = s[1];
        C d, e;
        if (FLAVOR == KERAS) {
            m = m + (g + m * k.mu_minus_one);
            u = NESTEROV ? g + k.mu * m : m;
        } else {
            d = g - m;
            m = k.w_low > C(0) ? fma(k.w, d, m) : fma(k.w - k.one, d, g);
            e = m - g;
            if (NESTEROV) {
                u = k.mu_low > C(0) ? fma(k.mu, e, g) : fma(k.mu - k.one, e, m);
            } else {
                u = m;
            }
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR, int NESTEROV>
__global__ void muon_momentum(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, 2, fusedopt::MuonMomentumRule<C, FLAVOR, NESTEROV>);
}
