"""AdEMAMix, Adam with a mixture of a fast and a slow gradient EMA (Pagliardini et al., 2024),
as bitsandbytes' 32-bit ``AdEMAMix`` has it.

    m1 = b1 m1 + (1 - b1) g;  m2 = b3_t m2 + (1 - b3_t) g;  nu = b2 nu + (1 - b2) g^2
    theta -= lr (m1 / (1 - b1^t) + alpha_t m2) / (sqrt(nu) / sqrt(1 - b2^t) + eps)

The warm-ups are functions of the step, computed on the host in float64: with ``t_alpha``,
``alpha_t = min(t alpha / t_alpha, alpha)``; with ``t_beta3``, beta3 moves from b1 to b3 as
``b3_t = min(exp(ln b1 ln b3 / ((1 - t / t_beta3) ln b3 + (t / t_beta3) ln b1)), b3)`` (a
half-life growing linearly with t). Weight decay: bitsandbytes' decoupled ``theta *= 1 - lr
wd`` first (torch convention); Keras-style ``theta -= theta wd lr`` in the Keras convention.
"""

from __future__ import annotations

import math

from ..constants import KERAS, TORCH_DECOUPLED
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    ADAM_LIKE,
    BETA,
    DECAY_SCALARS,
    TORCH_ONLY,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    at_least,
    decay_scalars,
    declare,
    flavor,
    optional,
)

SCALARS = (*DECAY_SCALARS, "b1", "one_minus_b1", "b2", "one_minus_b2", "b3", "one_minus_b3",
           "bc1", "root_bc2", "alpha", "eps")


def warmed_up(hp, step):
    """(alpha_t, beta3_t) of 1-based ``step``: the warm-up schedules, or the targets without
    them (``t_alpha`` / ``t_beta3`` None or 0, as bitsandbytes reads them)."""
    alpha, b1, b3 = float(hp["alpha"]), float(hp["beta_1"]), float(hp["beta_3"])
    t_alpha, t_beta3 = hp["t_alpha"], hp["t_beta3"]
    if t_alpha:
        alpha = min(step * alpha / t_alpha, alpha)
    if t_beta3:
        ln_b1, ln_b3 = math.log(b1), math.log(b3)
        scale = step / t_beta3
        b3 = min(math.exp(ln_b1 * ln_b3 / ((1 - scale) * ln_b3 + scale * ln_b1)), b3)
    return alpha, b3


def scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    alpha, b3 = warmed_up(hp, step)
    return {**decay_scalars(hp), "b1": b1, "one_minus_b1": 1.0 - b1, "b2": b2,
            "one_minus_b2": 1.0 - b2, "b3": b3, "one_minus_b3": 1.0 - b3,
            "bc1": 1.0 - b1**step, "root_bc2": math.sqrt(1.0 - b2**step), "alpha": alpha,
            "eps": float(hp["epsilon"])}


def rule(p, g, m1, m2, nu, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m1 = k.b1 * m1 + k.one_minus_b1 * g
    m2 = k.b3 * m2 + k.one_minus_b3 * g
    nu = k.b2 * nu + k.one_minus_b2 * (g * g)
    mixed = m1 / k.bc1 + k.alpha * m2
    p = p - k.lr * (mixed / (sqrt(nu) / k.root_bc2 + k.eps))
    return p, m1, m2, nu


def unfused(xp, p, g, s, k, f):
    m1, m2, nu = s["m1"], s["m2"], s["nu"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m1 *= k.b1
    m1 += k.one_minus_b1 * g
    m2 *= k.b3
    m2 += k.one_minus_b3 * g
    nu *= k.b2
    nu += k.one_minus_b2 * (g * g)
    p -= k.lr * ((m1 / k.bc1 + k.alpha * m2) / (xp.sqrt(nu) / k.root_bc2 + k.eps))


def _optim_bits(value):
    return None if value == 32 and not isinstance(value, bool) else (
        "must be 32: fusedopt keeps AdEMAMix's state in the params' precision (or the "
        "state_dtype asked for); 8-bit state is not provided")


def _not_paged(value):
    return None if value is False else "must be False: fusedopt keeps no paged state"


def check(hp, convention):
    for name in ("t_alpha", "t_beta3"):
        value = hp[name]
        if value is not None and value != int(value):
            raise ValueError(f"{name} must be None or a whole number of steps, got {value!r}")
    if hp["t_beta3"] and (hp["beta_1"] == 0 or hp["beta_3"] == 0):
        raise ValueError("the beta3 warm-up (t_beta3) takes logarithms of beta_1 and beta_3: "
                         "both must be > 0")


DOC = r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024, https://arxiv.org/abs/2409.03137), fused.

Adam whose momentum mixes a fast EMA of the grad (``beta_1``) with a slow one (``beta_3``),
weighted by ``alpha``::

    m1 = beta_1 * m1 + (1 - beta_1) * g
    m2 = beta_3_t * m2 + (1 - beta_3_t) * g
    nu = beta_2 * nu + (1 - beta_2) * g**2
    theta -= lr * (m1 / (1 - beta_1**t) + alpha_t * m2) / (sqrt(nu) / sqrt(1 - beta_2**t) + eps)

``t_alpha`` and ``t_beta3`` warm ``alpha`` and ``beta_3`` up over that many steps (None: no
warm-up), as bitsandbytes' ``AdEMAMix`` does. ``convention="torch"`` (``fusedopt.torch.AdEMAMix``)
decays as bitsandbytes does, ``theta *= 1 - lr * weight_decay`` first; the Keras convention
decays as Keras' optimizers do, ``theta -= theta * weight_decay * lr``.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    beta_1, beta_2, beta_3: the fast EMA's, the second moment's and the slow EMA's decays,
        in [0, 1). 0.9, 0.999, 0.9999.
    alpha: weight of the slow EMA, >= 0. 5.0.
    t_alpha, t_beta3: warm-up lengths in steps, None or >= 0. None.
    epsilon: added to the denominator, >= 0. 1e-7 (bitsandbytes' is 1e-8).
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(2, np.float32)
    >>> opt = fusedopt.AdEMAMix(learning_rate=0.1, alpha=0.0)
    >>> opt.apply_gradients([(np.array([1, -2], np.float32), w)])
    1
    >>> np.round(w, 4)   # alpha 0: Adam's first step, lr * sign(g)
    array([0.9, 1.1], dtype=float32)
"""

ADEMAMIX = declare(
    name="ademamix", class_name="AdEMAMix", rule=rule, unfused=unfused, check=check, doc=DOC,
    hypers=(*ADAM_LIKE, Hyper("beta_3", 0.9999, BETA), Hyper("alpha", 5.0, at_least(0.0)),
            Hyper("t_alpha", None, optional(at_least(0.0))),
            Hyper("t_beta3", None, optional(at_least(0.0))), WEIGHT_DECAY,
            Hyper("optim_bits", 32, _optim_bits, TORCH_ONLY),
            Hyper("min_8bit_size", 4096, at_least(0.0), TORCH_ONLY),
            Hyper("is_paged", False, _not_paged, TORCH_ONLY)),
    keras_signature=("learning_rate", "beta_1", "beta_2", "beta_3", "alpha", "t_alpha",
                     "t_beta3", "epsilon", "weight_decay"),
    flag_names=("flavor",), flags=lambda hp, conv: (flavor(conv, True),),
    all_flags=((KERAS,), (TORCH_DECOUPLED,)),
    slots=(Slot("m1"), Slot("m2"), Slot("nu")), scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="AdEMAMix",
               positional=(("lr", 1e-3), ("betas", (0.9, 0.999, 0.9999)), ("alpha", 5.0),
                           ("t_alpha", None), ("t_beta3", None), ("eps", 1e-8),
                           ("weight_decay", 1e-2), ("optim_bits", 32),
                           ("min_8bit_size", 4096), ("is_paged", False)),
               keyword=(), renames=(("alpha", "alpha"),),
               tuples=(("betas", ("beta_1", "beta_2", "beta_3")),),
               state=(("m1", "m1"), ("m2", "m2"), ("nu", "nu")),
               peer="bitsandbytes.optim:AdEMAMix",
               rule="m1 = b1 m1 + (1 - b1) g;  m2 = b3_t m2 + (1 - b3_t) g;  "
               "nu = b2 nu + (1 - b2) g^2\np *= 1 - lr weight_decay;  "
               "p -= lr (m1 / (1 - b1^t) + alpha_t m2) / (sqrt(nu) / sqrt(1 - b2^t) + eps)\n"
               "alpha_t, b3_t: the t_alpha and t_beta3 warm-ups of bitsandbytes"))

SPECS = (ADEMAMIX,)
__test__ = {"AdEMAMix": DOC}
