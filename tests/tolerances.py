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

#: fusedopt.torch vs torch.optim (and lion_pytorch) in a real training loop of 50 steps:
#: max |difference| over max |torch's value|, per param tensor, by param dtype. In float64
#: the two agree to rounding (measured <= 1e-14 but where the loop itself amplifies).
#: In float32 each step's last-bit differences (an ulp of a param, either way) compound
#: through the training dynamics to 2e-7..3e-6 after 50 steps (1.2e-5 for RMSprop with two
#: groups), as they do between torch's own implementations (single-tensor vs fused
#: Adagrad: 7e-7 in the same loop); VS_TORCH_SHADOW holds the arithmetic itself to 1e-6.
VS_TORCH_LOOP = {"float64": 1e-10, "float32": 5e-5}

#: The same loop with the peer fed this loop's grads (no training dynamics in between): what
#: the optimizers' own float32 arithmetic leaves after 50 steps.
VS_TORCH_SHADOW = 1e-6

#: The same for state tensors (moments are sums of squared grads: a little further apart).
VS_TORCH_LOOP_STATE = {"float64": 1e-9, "float32": 5e-5}

#: A backend against the float64 reference, element by element, in units of the running
#: error bound of the reference's own formulas evaluated in the storage dtype
#: (tests/error_bounds.py): the property and denormal tests allow this factor. Measured on
#: every variant of every optimizer at grads of 1, 1e-20 and 1e-30 (float32) and 1e-156
#: (float64): at most 1.7 times the bound (Nadam's torch form in float64, where the float64
#: reference's own rounding is of the same size as the backend's); the kernels order some
#: operations differently from the reference (step sizes folded on the host,
#: m + (g - m)(1 - b1) for b1 m + (1 - b1) g), which moves the error by small factors, never
#: by the orders of magnitude a wrong formula does.
BOUND_FACTOR = {np.float32: 8.0, np.float64: 8.0}

#: fusedopt.keras vs keras.optimizers: the article's model fitted 5 epochs from one seed, max
#: abs weight difference (float32). What remains comes mostly from Keras computing beta**t in
#: float32 where fusedopt computes its step scalars in double.
KERAS_FIT = 1e-6

#: The same fits under the "mixed_float16" / "mixed_bfloat16" policies: the forward pass runs
#: on 16-bit copies of the float32 weights (about 3 significant digits), so a 1e-7 difference
#: in a weight can round its copy to the neighbouring 16-bit value and move a gradient by
#: 1e-3 relative; the weights then part faster than in float32.
KERAS_FIT_MIXED = 1e-5

#: fusedopt.torch with bfloat16/float16 params against torch.optim, one step from the same
#: params and state (the peer's, taken by fusedopt before each step), in units of the last
#: place of the peer's dtype at the tensor's largest magnitude; per param and state tensor.
#: - "fused" peers (torch's fused=True CPU kernels: Adam, AdamW, Adagrad) compute the step
#:   in fp32 from the same 16-bit inputs and round once at each store, as fusedopt does: the
#:   two fp32 results differ by a few fp32 ulps (2^-24 relative, far below a 16-bit ulp:
#:   2^-8 bf16, 2^-11 fp16), so the stored values are equal or neighbours: 1 ulp.
#: - "single": torch's default CPU path (single-tensor: every tensor op rounds its result to
#:   the param's dtype). A step chains up to 5 such ops per value (RMSprop, centered and with
#:   momentum: mul_, addcmul_, addcmul_, sqrt, add_, then addcdiv_ into the param), each
#:   off by up to half an ulp of an intermediate no larger than the tensor's largest value;
#:   with fusedopt's own half ulp: (5 + 1) / 2 = 3, plus one for the fp32 differences below
#:   them. Measured: at most 3 (Adadelta's acc_delta in bf16, Adamax's fp16 params).
#: Lion adds lr to the param bound (tests/torch16_runs.py says why).
TORCH_16BIT_ULPS = {"fused": 1, "single": 4}

#: fusedopt.torch vs torch.optim on PyTorch's optimizer database configs (5 steps of random
#: grads, no training loop in between): max |difference| over max(|torch's value|, 1), per
#: param and state tensor, by the real dtype (a complex tensor's: its parts'). Measured: at
#: most 1.4e-7 in float32 (about an ulp: RMSprop's, Adadelta's and Adagrad's square roots
#: rounded in another order) and 3.2e-16 in float64.
TORCH_OPTIM_DB = {"float32": 1e-6, "float64": 1e-14}

#: The same for torch.optim.Muon given a float32 tensor lr with float64 params: torch keeps
#: the lr a 0-d float32 tensor, so its 1 - lr * weight_decay and lr * scale are float32
#: products (2^-24 relative each), where fusedopt takes the lr's value and forms them in
#: float64. Over 5 steps that is up to 5 * 2 * 2^-24 ~ 6e-7 of the param: bounded by 1e-6.
TORCH_OPTIM_DB_FLOAT32_LR = 1e-6
