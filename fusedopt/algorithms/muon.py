"""Muon: momentum, then each 2-D update orthogonalized by Newton-Schulz iterations, then the
weight step (Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/; Liu et al.,
2025, https://arxiv.org/abs/2502.16982 for the update-RMS scaling).

torch convention (``torch.optim.Muon``)::

    m = lerp(m, g, 1 - mu);  u = lerp(g, m, mu) if nesterov else m
    O = NS(u) in bfloat16, X / max(||X||_F, eps) first, (a, b, c) as given
    theta *= 1 - lr * wd;  theta -= lr * s(shape) * O
    s = sqrt(max(1, rows / cols)) ("original", the default) or 0.2 sqrt(max(rows, cols))
    ("match_rms_adamw")

Keras convention (``keras.optimizers.Muon`` on its 2-D variables)::

    m = mu m + g;  u = g + mu m if nesterov else m
    O = NS(u) in the variable's dtype, X / (||X||_F + 1e-7) first
    theta -= theta * wd * lr;  theta -= lr * O * sqrt(max(rows, cols)) * rms_rate

NS, ``steps`` times on X (transposed first when rows > cols): ``A = X X^T``,
``B = b A + c A A``, ``X = a X + B X``.

A step is two element passes and a batched transform between them
(fusedopt/engine/orthogonal.py): the momentum pass reads g and m and writes m and u (u
into a stack of the tensor's shape); the transform runs on each stack, one batched matmul
per product for every tensor of that shape; the weight pass reads the param and O and
writes the param. In float32 the passes move 4 + 8 + 4 (g, m read and written, u written)
and 12 (p read and written, O read) bytes per element, besides the param the first pass
also reads and writes unchanged (the CPU loop stores every operand it loads: 8 more).
"""

from __future__ import annotations

import math
import numbers

from ..constants import KERAS, TORCH_DECOUPLED
from .rulelib import fma
from .spec import (
    LEARNING_RATE,
    TORCH_ONLY,
    Hyper,
    Orthogonalized,
    Slot,
    at_least,
    boolean,
    decay_scalars,
    declare,
    optional,
)

KERAS_ONLY = frozenset({"keras"})
#: NS coefficients, step count and the eps of torch's ``torch.optim.Muon`` (Jordan's).
COEFFICIENTS = (3.4445, -4.7750, 2.0315)
#: Keras adds this to the Frobenius norm (a constant there, not an argument).
KERAS_NORM_EPS = 1e-7
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")

SCALARS = ("lr", "wd", "wd_factor", "w", "mu", "one", "mu_minus_one", "w_low", "mu_low")


#: The weight pass's scalars per tensor (:func:`step_sizes`).
PER_TENSOR = ("step_lr", "neg_step_lr", "sqrt_dim", "rate")


def _finite(value):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else "must be a finite number"


def _ns_steps(value):
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value < 100
    return None if ok else "must be an int in [0, 100) (torch refuses 100 or more)"


def _adjust(value):
    return None if value in ADJUST_LR_FNS else "must be None, 'original' or 'match_rms_adamw'"


HYPERS = (
    LEARNING_RATE,
    Hyper("weight_decay", 0.004, optional(at_least(0.0))),
    Hyper("momentum", 0.95, at_least(0.0)),
    Hyper("nesterov", True, boolean),
    Hyper("muon_a", COEFFICIENTS[0], _finite),
    Hyper("muon_b", COEFFICIENTS[1], _finite),
    Hyper("muon_c", COEFFICIENTS[2], _finite),
    Hyper("epsilon", 1e-7, at_least(0.0)),
    Hyper("ns_steps", 5, _ns_steps),
    Hyper("adjust_lr_fn", None, _adjust, TORCH_ONLY),
    Hyper("rms_rate", 0.2, optional(at_least(0.0)), KERAS_ONLY),
)


def scalars(hp, step, convention):
    """The passes' scalars. torch's ``lerp(a, b, w)`` on the CPU is one fused multiply-add:
    ``fma(w, b - a, a)`` for ``|w| < 0.5`` (``w_low``/``mu_low`` 1), else
    ``fma(w - 1, b - a, b)``, ``w - 1`` in the compute type (``one`` is 1 so that the rule
    subtracts it there); Keras' ``m * (momentum - 1)`` takes the host's ``momentum - 1``."""
    mu = float(hp["momentum"])
    w = 1.0 - mu
    return {**decay_scalars(hp), "w": w, "mu": mu, "one": 1.0, "mu_minus_one": mu - 1.0,
            "w_low": float(abs(w) < 0.5), "mu_low": float(abs(mu) < 0.5)}


def momentum_rule(p, g, m, u, k, f):
    if f.flavor == KERAS:
        m = m + (g + m * k.mu_minus_one)
        u = g + k.mu * m if f.nesterov else m
    else:
        d = g - m
        m = fma(k.w, d, m) if k.w_low > 0 else fma(k.w - k.one, d, g)
        e = m - g
        if f.nesterov:
            u = fma(k.mu, e, g) if k.mu_low > 0 else fma(k.mu - k.one, e, m)
        else:
            u = m
    return p, m, u


def rule(p, g, m, k, f):
    """The momentum pass without its update buffer (the engine runs ``momentum_rule``)."""
    if f.flavor == KERAS:
        m = m + (g + m * k.mu_minus_one)
    else:
        d = g - m
        m = fma(k.w, d, m) if k.w_low > 0 else fma(k.w - k.one, d, g)
    return p, m


def weight_rule(p, g, k, f):
    """``g`` is the orthogonalized update O. torch: ``p *= 1 - lr wd``, then
    ``add_(O, alpha=-step_lr)``, a fused multiply-add on the CPU. Keras, in its order of
    float32 products: ``p - p wd lr``, then ``p - ((lr O) sqrt(max(rows, cols))) rms_rate``
    (``rate`` -1 for ``rms_rate=None``: ``p - lr O``)."""
    if f.flavor == KERAS:
        p = p - p * k.wd * k.lr
        p = p - ((k.lr * g) * k.sqrt_dim) * k.rate if k.rate >= 0 else p - k.lr * g
    else:
        p = p * k.wd_factor
        p = fma(k.neg_step_lr, g, p)
    return (p,)


def _lerp(a, b, w, w_low, one):
    """torch's lerp as array expressions (rounded twice: the unfused baseline)."""
    return a + w * (b - a) if w_low > 0 else b + (w - one) * (b - a)


def momentum_unfused(xp, p, g, s, k, f):
    m, u = s["m"], s["u"]
    if f.flavor == KERAS:
        m += g + m * k.mu_minus_one
        u[...] = g + k.mu * m if f.nesterov else m
        return
    m[...] = _lerp(m, g, k.w, k.w_low, k.one)
    u[...] = _lerp(g, m, k.mu, k.mu_low, k.one) if f.nesterov else m


def unfused(xp, p, g, s, k, f):
    m = s["m"]
    if f.flavor == KERAS:
        m += g + m * k.mu_minus_one
    else:
        m[...] = _lerp(m, g, k.w, k.w_low, k.one)


def weight_unfused(xp, p, g, s, k, f):
    if f.flavor == KERAS:
        p -= p * k.wd * k.lr
        p -= ((k.lr * g) * k.sqrt_dim) * k.rate if k.rate >= 0 else k.lr * g
    else:
        p *= k.wd_factor
        p -= k.step_lr * g


def transform_dtype(convention: str, dtype: str) -> str:
    """torch runs Newton-Schulz in bfloat16 whatever the param's dtype; Keras in the
    variable's."""
    return "bfloat16" if convention == "torch" else dtype


def newton_schulz(ops, stack, hp, convention):
    """Each matrix of ``stack`` (count, rows, cols) orthogonalized: the normalization, then
    ``ns_steps`` quintic iterations, every product one batched call of ``ops``. The values
    live in the workspace of ``ops`` (fusedopt/backends/matmul.py): the update converted
    once and normalized in place, then each iteration's products in named buffers, ``X``
    alternating between two (a product never writes what it reads); the result is the last
    of them, valid until the next call with the same workspace."""
    a, b, c = (float(hp[n]) for n in ("muon_a", "muon_b", "muon_c"))
    tall = stack.shape[-2] > stack.shape[-1]
    x = ops.cast(stack, transform_dtype(convention, str(stack.dtype).replace("torch.", "")),
                 into="u")
    if tall:
        x = ops.transposed(x)
    if convention == "torch":
        x = ops.divide(x, ops.at_least(ops.norms(x), float(hp["epsilon"])))
        for i in range(int(hp["ns_steps"])):
            gram = ops.mm(x, ops.transposed(x), into="gram")
            poly = ops.add_mm(gram, gram, gram, beta=b, alpha=c, into="poly")
            x = ops.add_mm(x, poly, x, beta=a, into=_X[i % 2])
    else:
        x = ops.divide(x, ops.norms(x) + KERAS_NORM_EPS)
        for _ in range(int(hp["ns_steps"])):
            gram = ops.mm(x, ops.transposed(x), into="gram")
            poly = b * gram + ops.mm(c * gram, gram)
            x = a * x + ops.mm(poly, x)
    return ops.transposed(x) if tall else x


#: The two buffers the iterations' ``X`` alternates between.
_X = ("x0", "x1")


def step_sizes(hp, shape, convention, k):
    """A tensor of ``shape`` (rows, cols): ``step_lr`` its step size and ``neg_step_lr``
    its negative (torch); ``sqrt_dim`` sqrt(max(rows, cols)) and ``rate`` the rms_rate (-1
    for None: no scaling), the factors Keras multiplies by one at a time."""
    rows, cols = shape
    lr = float(hp["learning_rate"])
    sqrt_dim = math.sqrt(max(rows, cols))
    if convention == "keras":
        rate = -1.0 if hp["rms_rate"] is None else float(hp["rms_rate"])
        step_lr = lr * sqrt_dim * rate if rate >= 0 else lr
    else:
        rate = 0.0
        step_lr = lr * (math.sqrt(max(1.0, rows / cols)) if hp["adjust_lr_fn"] in
                        (None, "original") else 0.2 * sqrt_dim)
    return {"step_lr": step_lr, "neg_step_lr": -step_lr, "sqrt_dim": sqrt_dim, "rate": rate}


def _flags(hp, conv):
    return (KERAS if conv == "keras" else TORCH_DECOUPLED, int(bool(hp["nesterov"])))


_VARIANTS = tuple((fl, n) for fl in (KERAS, TORCH_DECOUPLED) for n in (0, 1))
_COMMON = dict(hypers=HYPERS, flag_names=("flavor", "nesterov"), flags=_flags,
               all_flags=_VARIANTS, dtypes=("float32", "float64", "bfloat16"))

MOMENTUM_PASS = declare(name="muon_momentum", class_name="MuonMomentum", rule=momentum_rule,
                        kernel="muon_momentum",
                        # the param is passed through unchanged; u is written, never read
                        unread=lambda flags: ("p", "u"),
                        unfused=momentum_unfused,
                        # u, the update Newton-Schulz reads, stays float beside quantized m
                        slots=(Slot("m"), Slot("u", float_state=True)),
                        scalar_names=SCALARS, scalar_fn=scalars, **_COMMON)
WEIGHT_PASS = declare(name="muon_weight", class_name="MuonWeight", rule=weight_rule,
                      kernel="muon_weight",
                      unfused=weight_unfused, slots=(),
                      scalar_names=(*SCALARS, *PER_TENSOR),
                      scalar_fn=lambda hp, t, c: {**scalars(hp, t, c),
                                                  **dict.fromkeys(PER_TENSOR, 0.0)},
                      **_COMMON)


DOC = r"""Muon (Jordan et al., 2024, https://kellerjordan.github.io/posts/muon/), fused: momentum,
then each 2-D update orthogonalized by Newton-Schulz iterations, then the weight step.

Keras convention (default), as ``keras.optimizers.Muon`` on its 2-D variables::

    m = momentum * m + g
    u = g + momentum * m if nesterov else m
    O = NS(u)                      # ns_steps iterations of (muon_a, muon_b, muon_c)
    theta -= theta * weight_decay * learning_rate
    theta -= learning_rate * O * sqrt(max(rows, cols)) * rms_rate

``convention="torch"`` is ``torch.optim.Muon``: ``m`` an average (``lerp(m, g, 1 -
momentum)``), Newton-Schulz in bfloat16, ``theta *= 1 - lr * weight_decay`` and the step
size ``sqrt(max(1, rows / cols))`` times ``learning_rate`` (``adjust_lr_fn="original"``)
or ``0.2 sqrt(max(rows, cols))`` (``"match_rms_adamw"``). The iterations of all the
tensors of one shape run as one batched matmul per product (the array library's: BLAS
through NumPy or torch). Params must be 2-D.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    weight_decay: None or >= 0. 0.004.
    momentum: >= 0. 0.95.
    nesterov: Nesterov momentum. True.
    muon_a, muon_b, muon_c: the Newton-Schulz coefficients. 3.4445, -4.7750, 2.0315.
    epsilon: torch: the least norm the update is divided by. 1e-7.
    ns_steps: Newton-Schulz iterations, an int in [0, 100). 5.
    rms_rate: Keras: the update-RMS factor (Liu et al., 2025), or None. 0.2.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.zeros((2, 2), np.float32)
    >>> opt = fusedopt.Muon(learning_rate=0.1, weight_decay=None, rms_rate=None, ns_steps=0)
    >>> opt.apply_gradients([(np.array([[3.0, 0.0], [0.0, 4.0]], np.float32), w)])
    1
    >>> w.round(6)    # ns_steps=0: O = u / ||u|| = g / 5 (u = g + 0.95 g); w -= 0.1 O
    array([[-0.06,  0.  ],
           [ 0.  , -0.08]], dtype=float32)
"""

MUON = declare(
    name="muon", class_name="Muon", rule=rule, unfused=unfused, doc=DOC,
    slots=(Slot("m"),), scalar_names=SCALARS, scalar_fn=scalars,
    keras_signature=("learning_rate", "weight_decay", "momentum", "nesterov", "muon_a",
                     "muon_b", "muon_c", "epsilon", "ns_steps", "rms_rate"),
    matrix=Orthogonalized(momentum=MOMENTUM_PASS, transform=newton_schulz,
                          dtype=transform_dtype, weight=WEIGHT_PASS,
                          scale_names=PER_TENSOR, scales=step_sizes),
    torch=dict(name="Muon",
               positional=(("lr", 1e-3), ("weight_decay", 0.1), ("momentum", 0.95),
                           ("nesterov", True), ("ns_coefficients", COEFFICIENTS),
                           ("eps", 1e-7), ("ns_steps", 5), ("adjust_lr_fn", None)),
               keyword=(),
               tuples=(("ns_coefficients", ("muon_a", "muon_b", "muon_c")),),
               state=(("m", "momentum_buffer"),), counts_steps=False,
               peer="torch.optim:Muon",
               rule="buf = lerp(buf, g, 1 - momentum);  u = lerp(g, buf, momentum) if "
               "nesterov else buf\n"
               "O = Newton-Schulz(u) in bfloat16, ns_steps iterations of ns_coefficients\n"
               "p *= 1 - lr * weight_decay;  p -= lr * s * O,  s = sqrt(max(1, rows/cols)) "
               "(adjust_lr_fn 'original') or 0.2 sqrt(max(rows, cols)) ('match_rms_adamw')\n"
               "2-D params only, as torch.optim.Muon."),
    **_COMMON)

SPECS = (MUON,)
__test__ = {"Muon": DOC}
