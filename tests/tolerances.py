"""Every numeric tolerance of the suite, in one table keyed by what is compared."""

import numpy as np

#: fused/unfused vs the float64 reference after 10+ steps: relative, plus an absolute floor
#: for elements that pass near zero (one float32 ulp at |x| ~ 1 is 1.2e-7).
VS_REFERENCE = {
    np.float32: dict(rtol=1e-6, atol=1e-6),
    np.float64: dict(rtol=1e-12, atol=1e-12),
}

#: fusedopt (float32) vs real Keras / PyTorch float32 over 20 steps: max abs difference.
VS_PEER_FLOAT32 = 1e-5

#: fusedopt.keras vs keras.optimizers: the article's model fitted 5 epochs from one seed, max
#: abs weight difference (float32). What remains comes mostly from Keras computing beta**t in
#: float32 where fusedopt computes its step scalars in double.
KERAS_FIT = 1e-6

#: The same fits under the "mixed_float16" / "mixed_bfloat16" policies: the forward pass runs
#: on 16-bit copies of the float32 weights (about 3 significant digits), so a 1e-7 difference
#: in a weight can round its copy to the neighbouring 16-bit value and move a gradient by
#: 1e-3 relative; the weights then part faster than in float32.
KERAS_FIT_MIXED = 1e-5
