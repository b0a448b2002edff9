"""Adan, adaptive Nesterov momentum (Xie et al., 2022, https://arxiv.org/abs/2208.06677), as
torch-optimi 0.3.3's ``optimi.Adan`` has it.

    b_hat = (b^t - b) / (b^t - 1)   (each beta debiased: the EMAs need no bias correction)
    d = g - g_prev   (0 at a param's first step)
    m = lerp(m, g, 1 - b1_hat);  v = lerp(v, d, 1 - b2_hat)
    n = b3_hat n + (1 - b3_hat) (g + b2 d)^2
    theta -= lr m / (sqrt(n) + eps) + lr b2 v / (sqrt(n) + eps)
    theta /= 1 + lr wd      (decouple_lr: 1 + lr / max_lr wd; adam_wd: theta *= 1 - lr wd first)

The fourth slot keeps the grad negated (``-g``), as optimi's ``prev_grad`` does, so that
``d`` is one addition. optimi's betas are the paper's complements (its 0.98, 0.92, 0.99 are
the paper's 0.02, 0.08, 0.01). Weight decay in the Keras convention is Keras' own for every
optimizer: ``theta -= theta * wd * lr`` first, no division after.
"""

from __future__ import annotations

from ..constants import KERAS, TORCH_DECOUPLED
from .rulelib import sqrt
from .spec import (
    BETA,
    LEARNING_RATE,
    TORCH_ONLY,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    at_least,
    boolean,
    declare,
    optional,
)

SCALARS = ("keep", "lr", "lr_b2", "shrink", "b1_comp", "b1_hat", "b2", "b2_comp", "b2_hat",
           "b3_hat", "b3_comp", "eps")


def debiased(beta: float, step: int) -> float:
    """beta (1 - beta^(t-1)) / (1 - beta^t), written as optimi writes it (0 at step 1)."""
    return (beta**step - beta) / (beta**step - 1)


def scalars(hp, step, convention):
    """The step's scalars: the decay as ``theta * keep`` before the update and ``/ shrink``
    after it (Keras': keep 1 - lr wd; optimi's proximal one: shrink 1 + lr wd, lr / max_lr
    in place of lr under decouple_lr; its Adam-style one, adam_wd: keep 1 - lr wd), each 1
    where unused, and the debiased betas with both of torch's lerp weights (w and 1 - w).
    At step 1 the grad difference is 0 (optimi starts prev_grad at -g), where the slot is
    0 and g + 0 is g: b2 and b2_comp are 0 there, so that neither the difference nor its
    average moves anything, and v stays 0."""
    lr, wd = float(hp["learning_rate"]), float(hp["weight_decay"] or 0.0)
    b1_hat, b2_hat, b3_hat = (debiased(float(hp[b]), step)
                              for b in ("beta_1", "beta_2", "beta_3"))
    first = step == 1
    keep, shrink = 1.0 - lr * wd, 1.0
    if convention == "torch":
        max_lr = hp.get("max_lr")
        max_lr = lr if max_lr is None else float(max_lr)
        rate = (lr / max_lr if max_lr else 0.0) if hp.get("decouple_lr") else lr
        keep = 1.0 - rate * wd if hp.get("adam_wd") else 1.0
        shrink = 1.0 if hp.get("adam_wd") else 1.0 + rate * wd
    b2 = float(hp["beta_2"])
    return {"keep": keep, "lr": lr, "lr_b2": lr * b2, "shrink": shrink,
            "b1_comp": 1.0 - b1_hat, "b1_hat": b1_hat, "b2": 0.0 if first else b2,
            "b2_comp": 0.0 if first else 1.0 - b2_hat, "b2_hat": 1.0 if first else b2_hat,
            "b3_hat": b3_hat, "b3_comp": 1.0 - b3_hat, "eps": float(hp["epsilon"])}


def rule(p, g, m, v, n, neg_grad, k, f):
    # optimi's foreach order: torch's lerp (w (e - s) + s for w < 0.5, else e - (e - s)
    # (1 - w)), then the two addcdivs and the division of its proximal decay.
    d = g + neg_grad
    m = m + k.b1_comp * (g - m) if k.b1_comp + k.b1_comp < 1 else g - (g - m) * k.b1_hat
    v = v + k.b2_comp * (d - v) if k.b2_comp + k.b2_comp < 1 else d - (d - v) * k.b2_hat
    nesterov = d * k.b2 + g
    n = n * k.b3_hat + k.b3_comp * nesterov * nesterov
    neg_grad = -g
    denom = sqrt(n) + k.eps
    p = p * k.keep
    p = p - k.lr * (m / denom)
    p = p - k.lr_b2 * (v / denom)
    p = p / k.shrink
    return p, m, v, n, neg_grad


def unfused(xp, p, g, s, k, f):
    m, v, n, neg_grad = s["m"], s["v"], s["n"], s["neg_grad"]
    d = g + neg_grad
    m[...] = m + k.b1_comp * (g - m) if k.b1_comp < 0.5 else g - (g - m) * k.b1_hat
    v[...] = v + k.b2_comp * (d - v) if k.b2_comp < 0.5 else d - (d - v) * k.b2_hat
    nesterov = d * k.b2 + g
    n *= k.b3_hat
    n += k.b3_comp * nesterov * nesterov
    neg_grad[...] = -g
    denom = xp.sqrt(n) + k.eps
    p *= k.keep
    p -= k.lr * (m / denom)
    p -= k.lr_b2 * (v / denom)
    p /= k.shrink


DOC = r"""Adan, adaptive Nesterov momentum (Xie et al., 2022, https://arxiv.org/abs/2208.06677),
fused, as torch-optimi's ``optimi.Adan``. ``t`` the 1-based step, ``d = g - g_prev`` (0 at
the first step)::

    beta_hat = (beta**t - beta) / (beta**t - 1)           (beta_1, beta_2 and beta_3)
    m = lerp(m, g, 1 - beta_1_hat);  v = lerp(v, d, 1 - beta_2_hat)
    n = beta_3_hat * n + (1 - beta_3_hat) * (g + beta_2 * d)**2
    theta -= learning_rate * (m + beta_2 * v) / (sqrt(n) + epsilon)

Four state slots: ``m``, ``v``, ``n`` and ``neg_grad`` (the last step's grad, negated). In
the Keras convention (default) weight decay is Keras': ``theta -= theta * weight_decay *
learning_rate`` first. ``convention="torch"`` (``fusedopt.torch.Adan``) is optimi's: after
the update ``theta /= 1 + learning_rate * weight_decay`` (the paper's proximal step), with
``decouple_lr`` ``learning_rate / max_lr`` in place of ``learning_rate``, and with ``adam_wd``
``theta *= 1 - learning_rate * weight_decay`` before the update instead.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    beta_1, beta_2, beta_3: the decays of the grad's, the grad difference's and the
        squared Nesterov grad's averages, in [0, 1). 0.98, 0.92, 0.99.
    epsilon: added to sqrt(n), >= 0. 1e-6.
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(2, np.float32)
    >>> opt = fusedopt.Adan(learning_rate=0.1)
    >>> opt.apply_gradients([(np.array([2.0, -0.5], np.float32), w)])
    1
    >>> w.round(4)    # step 1: m = g, v = 0, n = g**2: w -= 0.1 * g / (|g| + eps)
    array([0.9, 1.1], dtype=float32)
"""

ADAN = declare(
    name="adan", class_name="Adan", rule=rule, unfused=unfused, doc=DOC,
    hypers=(LEARNING_RATE, Hyper("beta_1", 0.98, BETA), Hyper("beta_2", 0.92, BETA),
            Hyper("beta_3", 0.99, BETA), Hyper("epsilon", 1e-6, at_least(0.0)),
            WEIGHT_DECAY,
            Hyper("decouple_lr", False, boolean, conventions=TORCH_ONLY),
            Hyper("max_lr", None, optional(at_least(0.0)), conventions=TORCH_ONLY),
            Hyper("adam_wd", False, boolean, conventions=TORCH_ONLY)),
    keras_signature=("learning_rate", "beta_1", "beta_2", "beta_3", "epsilon",
                     "weight_decay"),
    flag_names=("flavor",),
    flags=lambda hp, conv: (KERAS if conv == "keras" else TORCH_DECOUPLED,),
    all_flags=((KERAS,), (TORCH_DECOUPLED,)),
    slots=(Slot("m"), Slot("v"), Slot("n"), Slot("neg_grad")), scalar_names=SCALARS,
    scalar_fn=scalars,
    # optimi's signature; its lr has no default (1e-3 here, as for StableAdamW).
    torch=dict(name="Adan",
               positional=(("lr", 1e-3), ("betas", (0.98, 0.92, 0.99)),
                           ("weight_decay", 2e-2), ("eps", 1e-6), ("decouple_lr", False),
                           ("max_lr", None), ("adam_wd", False)),
               keyword=(("foreach", None),),
               tuples=(("betas", ("beta_1", "beta_2", "beta_3")),),
               state=(("m", "exp_avg"), ("v", "exp_avg_diff"), ("n", "exp_avg_sq"),
                      ("neg_grad", "prev_grad")),
               peer="optimi:Adan",
               rule="b_hat = (b^t - b) / (b^t - 1);  d = g + prev_grad (0 at step 1)\n"
               "exp_avg = lerp(exp_avg, g, 1 - b1_hat);  "
               "exp_avg_diff = lerp(exp_avg_diff, d, 1 - b2_hat)\n"
               "exp_avg_sq = b3_hat exp_avg_sq + (1 - b3_hat) (g + b2 d)^2;  prev_grad = -g\n"
               "p -= lr (exp_avg + b2 exp_avg_diff) / (sqrt(exp_avg_sq) + eps);  "
               "p /= 1 + lr weight_decay"))

SPECS = (ADAN,)
__test__ = {"Adan": DOC}
