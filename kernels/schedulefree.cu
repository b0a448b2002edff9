// Generated from fusedopt/algorithms/schedulefree.py by
// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there
// and regenerate; tests/test_codegen.py fails while this file differs.
//
// Schedule-free AdamW and SGD (Defazio et al., 2024, https://arxiv.org/abs/2405.15682), as
// the schedulefree package (``AdamWScheduleFree``, ``SGDScheduleFree``) and Keras'
// ``ScheduleFreeAdamW`` have them, and the pass that moves their params between the two points.
//
// Three sequences: z (the slot, where the gradient steps land), x (the weighted average of the
// z's, what one evaluates) and y = (1 - b1) z + b1 x, where the gradient is taken. In train
// mode the param holds y; x is never stored. With c the step's averaging weight::
//
//     AdamW:  v = b2 v + (1 - b2) g^2;  gn = g / (sqrt(v / (1 - b2^t)) + eps)   (SGD: gn = g)
//     torch:  gn += wd y  (decay at y)
//     y = lerp(y, z, c) + lr (b1 (1 - c) - 1) gn;   z -= lr gn
//
// lr is warmed up linearly over ``warmup_steps``. The weight c: torch convention (the
// schedulefree package) ``c = w_t / sum(w)``, ``w_t = t^r lr_max^weight_lr_power`` with
// ``lr_max`` the largest lr so far: ``lr_max`` and the running sum are optimizer-level scalars
// (``running``), advanced after every applied step and checkpointed with the optimizer. Keras
// convention (Keras' ScheduleFreeAdamW): c = 1/t, and Keras' decoupled decay ``y -= y wd lr``
// (the learning rate before warm-up) before the update, computed in Keras' order: z stepped,
// x recovered from y and z, averaged with z, y rebuilt. Keras 3.15 means x from the z before
// the step ("momentum_old"), but on its torch backend - the one fusedopt.keras runs on -
// ``momentum.value`` is the variable's own tensor, stepped in place before x is computed, so
// Keras recovers x from the new z; this convention reproduces what Keras computes there.
//
// The switch (``schedulefreeswitch``) is a second rule: eval moves the param from y to
// x = lerp(y, z, 1 - 1/b1) and keeps y in its slot; train puts the kept y back, bit for bit
// (the lerp back, ``lerp(x, z, 1 - b1)``, rounds: it would not give y's bits), or - with no y
// kept (a checkpoint of the schedulefree package taken in eval mode) - lerps back as that
// package does. It runs through the engine as an optimizer step whose "grad" is z
// (fusedopt/engine/modes.py).
#include "common.cuh"

namespace fusedopt {

// The step's scalars, by name, as the host computes them (in double) for a row.
template <typename C>
struct SchedulefreeScalars {
    C lr, wd, step_lr, b1, one_minus_b1, y_coef, c, one_minus_c, c_from_end, b2, one_minus_b2, bc2, eps;
};

template <typename C, int FLAVOR, int STEPPING, int ADAPTIVE, int TO_EVAL, int SAVED>
struct SchedulefreeRule {
    SchedulefreeScalars<C> k;

    static constexpr int n_scalars = 13;
    static FUSEDOPT_DEVICE SchedulefreeRule from(const C* row) { return {{row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11], row[12]}}; }

    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {
        C spare = C(0);  // a slot the variant has not: read as 0, unstored
        C& z = STEPPING ? s[0] : spare;
        C& v = ADAPTIVE ? s[(STEPPING ? 1 : 0)] : spare;
        C& y = SAVED ? s[(STEPPING ? 1 : 0) + (ADAPTIVE ? 1 : 0)] : spare;
        C x;
        if (!STEPPING) {
            if (TO_EVAL) {
                y = p;
                p = k.c_from_end > C(0) ? g - (g - p) * k.one_minus_c : p + k.c * (g - p);
            } else if (SAVED) {
                p = y;
            } else {
                p = k.c_from_end > C(0) ? g - (g - p) * k.one_minus_c : p + k.c * (g - p);
            }
        } else if (FLAVOR == KERAS && ADAPTIVE) {
            if (k.wd != C(0)) {
                p = p - p * k.wd * k.lr;
            }
            v = v + (g * g - v) * k.one_minus_b2;
            z = z - k.step_lr * g / (sqrt(v / k.bc2) + k.eps);
            x = (p - k.one_minus_b1 * z) / k.b1;
            x = k.one_minus_c * x + k.c * z;
            p = k.one_minus_b1 * z + k.b1 * x;
        } else {
            if (FLAVOR == KERAS) {
                if (k.wd != C(0)) {
                    p = p - p * k.wd * k.lr;
                }
            }
            if (ADAPTIVE) {
                v = k.b2 * v + k.one_minus_b2 * (g * g);
                g = g / (sqrt(v / k.bc2) + k.eps);
            }
            if (FLAVOR != KERAS && k.wd != C(0)) {
                g = g + k.wd * p;
            }
            p = k.c_from_end > C(0) ? z - (z - p) * k.one_minus_c : p + k.c * (z - p);
            p = p + k.y_coef * g;
            z = z - k.step_lr * g;
        }
    }
};

}  // namespace fusedopt

template <typename P, typename G, typename S, int MODE, int FLAVOR, int STEPPING, int ADAPTIVE, int TO_EVAL, int SAVED>
__global__ void schedulefree(FUSEDOPT_OPTIMIZER_PARAMS(P)) {
    using C = fusedopt::compute_t<P>;
    FUSEDOPT_APPLY(P, G, S, MODE, (STEPPING ? 1 : 0) + (ADAPTIVE ? 1 : 0) + (SAVED ? 1 : 0), fusedopt::SchedulefreeRule<C, FLAVOR, STEPPING, ADAPTIVE, TO_EVAL, SAVED>);
}
