"""StableAdamW, AdamW whose learning rate is clipped per tensor by the RMS of g^2 / v
(Wortsman et al., 2023, https://arxiv.org/abs/2304.13013), as torch-optimi 0.3.3's
``optimi.StableAdamW`` has it.

    b1_hat = (b1^t - b1) / (b1^t - 1), b2_hat likewise   (the debiased betas)
    m = lerp(m, g, 1 - b1_hat);  v = b2_hat v + (1 - b2_hat) g^2
    lr_t = lr / max(1, sqrt(mean(g^2 / max(v, eps^2))))           (one per tensor)
    theta *= 1 - lr_t wd          (decouple_lr: 1 - lr_t / max_lr * wd)
    theta -= lr_t m / (sqrt(v) + eps)

The Keras convention keeps every formula but weight decay, which is Keras' own for every
optimizer: ``theta -= theta * wd * lr`` first, with the scheduled (unclipped) lr.

A step is two passes over memory (besides the grad pre-pass when clipping by norm): the
reduction phase (fusedopt/engine/reductions.py) reads g and v and sums g^2 / max(v_new,
eps^2) per tensor, v_new recomputed, nothing written; the element pass is AdamW's, with
``lr_t`` and ``decay`` one scalar per tensor. In float32: 8 + 28 = 36 bytes per element,
the fewest any StableAdamW step can move: the element pass must read theta, g, m, v and
write theta, m, v (28, as AdamW), and every element's new v is needed before the first
theta is written, which takes one more read of g and v (8) or, writing v in the first
pass instead, one more write and read of v and the same 36.
"""

from __future__ import annotations

from ..constants import KERAS, TORCH_DECOUPLED
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    BETA,
    DECAY_SCALARS,
    LEARNING_RATE,
    TORCH_ONLY,
    Hyper,
    Reductions,
    Slot,
    at_least,
    boolean,
    decay_scalars,
    declare,
    optional,
)

SCALARS = (*DECAY_SCALARS, "b1_comp", "b1_hat", "lerp_low", "b2_hat", "b2_comp", "eps",
           "eps_sq", "wd_per_lr")


def debiased(beta: float, step: int) -> float:
    """beta * (1 - beta^(t-1)) / (1 - beta^t), written as optimi writes it."""
    return (beta**step - beta) / (beta**step - 1)


def scalars(hp, step, convention):
    b1_hat = debiased(float(hp["beta_1"]), step)
    b2_hat = debiased(float(hp["beta_2"]), step)
    b1_comp = 1.0 - b1_hat
    eps, wd = float(hp["epsilon"]), float(hp["weight_decay"] or 0.0)
    max_lr = hp.get("max_lr")
    max_lr = float(hp["learning_rate"] if max_lr is None else max_lr)
    decoupled = convention == "torch" and bool(hp.get("decouple_lr"))
    return {**decay_scalars(hp), "b1_comp": b1_comp,
            # torch's lerp: m + w (g - m) for w < 0.5, else g - (g - m)(1 - w).
            "b1_hat": b1_hat, "lerp_low": float(b1_comp < 0.5),
            "b2_hat": b2_hat, "b2_comp": 1.0 - b2_hat, "eps": eps,
            "eps_sq": eps * eps,
            "wd_per_lr": (wd / max_lr if max_lr else 0.0) if decoupled else wd}


def rule(p, g, m, v, k, f):
    if f.flavor == KERAS:
        p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    else:
        p = p * k.decay
    m = m + k.b1_comp * (g - m) if k.lerp_low > 0 else g - (g - m) * k.b1_hat
    v = v * k.b2_hat + k.b2_comp * g * g
    p = p - k.lr_t * (m / (sqrt(v) + k.eps))
    return p, m, v


def rms_terms(p, g, m, v, k, f):
    """The term of the mean of g^2 / max(v, eps^2), v the new second moment."""
    v = v * k.b2_hat + k.b2_comp * g * g
    floor = k.eps_sq if k.eps_sq > v else v
    return (g * g / floor,)


def unfused(xp, p, g, s, k, f):
    m, v = s["m"], s["v"]
    if f.flavor == KERAS:
        g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    else:
        p *= k.decay
    m[...] = m + k.b1_comp * (g - m) if k.lerp_low > 0 else g - (g - m) * k.b1_hat
    v *= k.b2_hat
    v += k.b2_comp * g * g
    p -= k.lr_t * (m / (xp.sqrt(v) + k.eps))


def unfused_rms_terms(xp, p, g, s, k, f):
    v = s["v"] * k.b2_hat + k.b2_comp * g * g
    return (g * g / xp.maximum(v, k.eps_sq),)


def clipped_lr(xp, sums, sizes, k):
    """lr_t = lr / max(1, rms) and the decay factor 1 - lr_t * wd (per lr of max_lr with
    decouple_lr), per tensor; an empty tensor or a NaN rms leaves lr as it is, as optimi's
    ``max(1, rms.item())`` does."""
    rms = xp.sqrt(sums["rms_sq"] / xp.maximum(sizes, 1.0))
    lr_t = k.lr / xp.where(rms > 1.0, rms, 1.0)
    return {"lr_t": lr_t, "decay": 1.0 - lr_t * k.wd_per_lr}


DOC = r"""StableAdamW (Wortsman et al., 2023, https://arxiv.org/abs/2304.13013), fused: AdamW
whose learning rate is divided, per tensor, by ``max(1, RMS(g**2 / v))``, as torch-optimi's
``optimi.StableAdamW``. ``t`` the 1-based step::

    beta_hat = (beta**t - beta) / (beta**t - 1)              (beta_1 and beta_2)
    m = lerp(m, g, 1 - beta_1_hat);  v = beta_2_hat * v + (1 - beta_2_hat) * g**2
    lr_t = learning_rate / max(1, sqrt(mean(g**2 / max(v, epsilon**2))))
    theta *= 1 - lr_t * weight_decay
    theta -= lr_t * m / (sqrt(v) + epsilon)

In the Keras convention (default) weight decay is Keras' instead:
``theta -= theta * weight_decay * learning_rate`` first; ``convention="torch"`` is optimi's
(and takes ``decouple_lr``, ``max_lr``). Each step reads the grads and ``v`` once for the
RMS, then steps everything in one pass.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    beta_1, beta_2: moment decays, in [0, 1). 0.9, 0.99.
    epsilon: added to sqrt(v); its square floors v in the RMS. >= 0. 1e-6.
    weight_decay: >= 0. 0.01.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(2, np.float32)
    >>> opt = fusedopt.StableAdamW(learning_rate=0.1, weight_decay=0.0)
    >>> opt.apply_gradients([(np.array([2.0, -0.5], np.float32), w)])
    1
    >>> w.round(4)    # step 1: m = g, v = g**2, RMS 1: w -= 0.1 * g / (|g| + eps)
    array([0.9, 1.1], dtype=float32)
"""

STABLEADAMW = declare(
    name="stableadamw", class_name="StableAdamW", keras_name="stable_adamw", rule=rule,
    unfused=unfused, doc=DOC,
    hypers=(LEARNING_RATE, Hyper("beta_1", 0.9, BETA), Hyper("beta_2", 0.99, BETA),
            Hyper("epsilon", 1e-6, at_least(0.0)), Hyper("weight_decay", 0.01, at_least(0.0)),
            Hyper("decouple_lr", False, boolean, conventions=TORCH_ONLY),
            Hyper("max_lr", None, optional(at_least(0.0)), conventions=TORCH_ONLY)),
    keras_signature=("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
    flag_names=("flavor",),
    flags=lambda hp, conv: (KERAS if conv == "keras" else TORCH_DECOUPLED,),
    all_flags=((KERAS,), (TORCH_DECOUPLED,)),
    slots=(Slot("m"), Slot("v")), scalar_names=SCALARS, scalar_fn=scalars,
    reductions=Reductions(names=("rms_sq",), rule=rms_terms, unfused=unfused_rms_terms,
                          scalar_names=("lr_t", "decay"), scalars=clipped_lr),
    # optimi's signature; its lr has no default (1e-3 here, torch.optim.AdamW's).
    torch=dict(name="StableAdamW",
               positional=(("lr", 1e-3), ("betas", (0.9, 0.99)), ("weight_decay", 1e-2),
                           ("eps", 1e-6), ("decouple_lr", False), ("max_lr", None)),
               keyword=(("foreach", None),),
               state=(("m", "exp_avg"), ("v", "exp_avg_sq")),
               peer="optimi:StableAdamW",
               rule="b_hat = (b^t - b) / (b^t - 1);  m = lerp(m, g, 1 - b1_hat);  "
               "v = b2_hat v + (1 - b2_hat) g^2\n"
               "lr_t = lr / max(1, sqrt(mean(g^2 / max(v, eps^2))))   (per tensor)\n"
               "p *= 1 - lr_t weight_decay;  p -= lr_t m / (sqrt(v) + eps)"))

SPECS = (STABLEADAMW,)
__test__ = {"StableAdamW": DOC}
