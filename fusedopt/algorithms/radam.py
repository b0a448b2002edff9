"""RAdam, Adam with the variance of its adaptive step rectified (Liu et al., 2020,
https://arxiv.org/abs/1908.03265), as torch.optim.RAdam has it.

    m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
    rho_inf = 2 / (1 - b2) - 1;  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
    rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                theta -= lr r sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    else:       theta -= lr / (1 - b1^t) * m

Everything but the element math is a function of the step, computed on the host in float64:
``adaptive_step`` (0 while the variance is not yet tractable) and ``plain_step`` (0 after).
Weight decay: L2 in torch, or ``theta *= 1 - lr wd`` with ``decoupled_weight_decay=True``;
Keras-style decoupled ``theta -= theta wd lr`` in the Keras convention.
"""

from __future__ import annotations

import math

from ..constants import KERAS, TORCH_DECOUPLED, TORCH_L2
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    ADAM_LIKE,
    DECAY_SCALARS,
    DECOUPLED,
    WEIGHT_DECAY,
    Slot,
    decay_scalars,
    declare,
    flavor,
)

SCALARS = (*DECAY_SCALARS, "b2", "one_minus_b1", "one_minus_b2", "eps", "adaptive_step",
           "plain_step", "rectified")


def scalars(hp, step, convention):
    b1, b2, lr = float(hp["beta_1"]), float(hp["beta_2"]), float(hp["learning_rate"])
    bc1, bc2 = 1.0 - b1**step, 1.0 - b2**step
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * step * b2**step / bc2
    rectified = rho_t > 5.0
    rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                     ) if rectified else 0.0
    return {**decay_scalars(hp), "b2": b2, "one_minus_b1": 1.0 - b1, "one_minus_b2": 1.0 - b2,
            "eps": float(hp["epsilon"]),
            "adaptive_step": lr * rect * math.sqrt(bc2) / bc1 if rectified else 0.0,
            "plain_step": 0.0 if rectified else lr / bc1, "rectified": float(rectified)}


def rule(p, g, m, v, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m = m + k.one_minus_b1 * (g - m)
    v = k.b2 * v + k.one_minus_b2 * (g * g)
    # A select, not a branch: the unchosen side may be 0/0 while v is 0 and eps is 0.
    step = m * k.adaptive_step / (sqrt(v) + k.eps) if k.rectified > 0 else m * k.plain_step
    p = p - step
    return p, m, v


def unfused(xp, p, g, s, k, f):
    m, v = s["m"], s["v"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m += k.one_minus_b1 * (g - m)
    v *= k.b2
    v += k.one_minus_b2 * (g * g)
    if k.rectified > 0:
        p -= m * k.adaptive_step / (xp.sqrt(v) + k.eps)
    else:
        p -= m * k.plain_step


DOC = r"""RAdam, rectified Adam (Liu et al., 2020, https://arxiv.org/abs/1908.03265), fused.

Adam whose adaptive step is used only once the variance of ``v`` is tractable (the length of
the approximated moving average rho_t exceeds 5), and then scaled by the rectification r;
before that, a momentum step ``theta -= lr / (1 - beta_1**t) * m``. As ``torch.optim.RAdam``
(``convention="torch"``, L2 weight decay or ``decoupled_weight_decay=True``); the Keras
convention decays as Keras' optimizers do, ``theta -= theta * weight_decay * lr``.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    beta_1, beta_2: moment decays, in [0, 1). 0.9, 0.999.
    epsilon: added to sqrt(v), >= 0. 1e-7 (torch's default is 1e-8).
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(3, np.float32)
    >>> opt = fusedopt.RAdam(learning_rate=0.5)
    >>> opt.apply_gradients([(np.array([1, -2, 0], np.float32), w)])
    1
    >>> w    # step 1 is not rectified: theta -= lr * m / (1 - beta_1)
    array([0.5, 2. , 1. ], dtype=float32)
"""

RADAM = declare(
    name="radam", class_name="RAdam", rule=rule, unfused=unfused, doc=DOC,
    hypers=(*ADAM_LIKE, WEIGHT_DECAY, DECOUPLED),
    keras_signature=("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
    flag_names=("flavor",),
    flags=lambda hp, conv: (flavor(conv, bool(hp["decoupled_weight_decay"])),),
    all_flags=((KERAS,), (TORCH_L2,), (TORCH_DECOUPLED,)),
    slots=(Slot("m"), Slot("v", nonneg=True)), scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="RAdam",
               positional=(("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8),
                           ("weight_decay", 0), ("decoupled_weight_decay", False)),
               keyword=(("foreach", None), ("maximize", False), ("capturable", False),
                        ("differentiable", False)),
               state=(("m", "exp_avg"), ("v", "exp_avg_sq")), peer="torch.optim:RAdam",
               rule="m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  rho_t as the paper\n"
               "rho_t > 5: p -= lr r sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)\n"
               "else: p -= lr / (1 - b1^t) * m\n"
               "weight_decay: g += weight_decay * p first (L2); decoupled_weight_decay=True: "
               "p *= 1 - lr * weight_decay instead."))

SPECS = (RADAM,)
__test__ = {"RAdam": DOC}
