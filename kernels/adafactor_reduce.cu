// Generated from fusedopt/algorithms/adafactor.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// The reduction phase of Adafactor: the per-element terms of p_sq, u_sq
// (sums in fusedopt/algorithms/adafactor.py), summed per tensor by kernels/reduce.cuh.
#include "factored_reduce.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
// Then the per-tensor ones, made from the reduction phase's sums on the device.
template <typename C>
struct AdafactorScalars {
    C lr, wd, wd_factor, w, one_minus_w, half, one, eps1, eps1_sq, rho, eps2, clip, step_lr, alpha, clip_ratio;
};

template <typename C, int FLAVOR>
struct AdafactorTerms {
    AdafactorScalars<C> k;

    using compute = C;
    // The grad as stored (the grad pre-pass) or as the element pass sees it (clipped).
    static constexpr bool as_stored = false;
    static constexpr int n_terms = 2;
    // The operands the terms read (kernels/reduce.cuh): no other is loaded.
    static constexpr unsigned reads = READS_P | READS_G | (READS_SLOT << 2);
    static FUSEDOPT_DEVICE AdafactorTerms from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11], C(0), C(0), C(0)}}; }

    FUSEDOPT_DEVICE void operator()(C p, C g, const C* s, C* out) const {
        C v = s[2];
        C u;
        if (FLAVOR == KERAS) {
            if (FLAVOR == TORCH_L2) {
                if (k.wd != C(0)) {
                    g = g + k.wd * p;
                }
            } else {
                p = p * k.wd_factor;
            }
            u = g / sqrt(v);
        } else {
            u = g * (k.one / sqrt(v > k.eps1_sq ? v : k.eps1_sq));
        }
        out[0] = p * p;
        out[1] = u * u;
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
__global__ void adafactor_reduce(FUSEDOPT_FACTORED_PARAMS(P),
                    const fusedopt::compute_t<P>* __restrict__ denominators,
                    double* __restrict__ partial) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_REDUCE_FACTORED(P, G, S, MODE, fusedopt::AdafactorTerms<C, FLAVOR>, fusedopt::AdafactorMoment<C, FLAVOR>);
}
