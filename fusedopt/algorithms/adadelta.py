"""Adadelta (Zeiler, 2012).

Both conventions::

    E_g = rho E_g + (1 - rho) g^2;  d = sqrt(E_d + eps) / sqrt(E_g + eps) * g
    E_d = rho E_d + (1 - rho) d^2;  theta -= lr d

(Keras multiplies by g before dividing; torch after, as each library does.)
"""

from __future__ import annotations

from ..constants import KERAS
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    BETA,
    DECAY_SCALARS,
    EPSILON,
    L2_FLAVORS,
    LEARNING_RATE,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    decay_scalars,
    declare,
    flavor,
)

SCALARS = (*DECAY_SCALARS, "rho", "one_minus_rho", "eps")


def scalars(hp, step, convention):
    rho = float(hp["rho"])
    return {**decay_scalars(hp), "rho": rho, "one_minus_rho": 1.0 - rho,
            "eps": float(hp["epsilon"])}


def rule(p, g, accumulated_grad, accumulated_delta_var, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    accumulated_grad = k.rho * accumulated_grad + k.one_minus_rho * (g * g)
    if f.flavor == KERAS:
        d = sqrt(accumulated_delta_var + k.eps) * g / sqrt(accumulated_grad + k.eps)
    else:
        d = sqrt(accumulated_delta_var + k.eps) / sqrt(accumulated_grad + k.eps) * g
    accumulated_delta_var = k.rho * accumulated_delta_var + k.one_minus_rho * (d * d)
    p = p - k.lr * d
    return p, accumulated_grad, accumulated_delta_var


def unfused(xp, p, g, s, k, f):
    eg, ed = s["accumulated_grad"], s["accumulated_delta_var"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    eg *= k.rho
    eg += k.one_minus_rho * (g * g)
    if f.flavor == KERAS:
        d = xp.sqrt(ed + k.eps) * g / xp.sqrt(eg + k.eps)
    else:
        d = xp.sqrt(ed + k.eps) / xp.sqrt(eg + k.eps) * g
    ed *= k.rho
    ed += k.one_minus_rho * (d * d)
    p -= k.lr * d


DOC = r"""Adadelta (Zeiler, 2012, https://arxiv.org/abs/1212.5701), fused.

Both conventions::

    Eg = rho * Eg + (1 - rho) * g**2
    d = sqrt(Ed + epsilon) / sqrt(Eg + epsilon) * g
    Ed = rho * Ed + (1 - rho) * d**2
    theta -= lr * d

``convention="torch"`` reproduces ``torch.optim.Adadelta``: the same update, with L2
weight decay (``g += wd * theta``); in the Keras convention weight decay is decoupled
(``theta -= theta * wd * lr``, before the update). The defaults stay Keras' in both
conventions: torch's own are ``learning_rate=1.0``, ``rho=0.9``, ``epsilon=1e-6``.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    rho: decay of both running averages, in [0, 1). 0.95.
    epsilon: >= 0. 1e-7.
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.zeros(2, np.float32)
    >>> opt = fusedopt.Adadelta(learning_rate=1.0, rho=0.0, epsilon=1.0)
    >>> opt.apply_gradients([(np.array([0.0, 3.0], np.float32), w)])
    1
    >>> np.round(w, 6)   # d = sqrt(0 + 1) / sqrt(g**2 + 1) * g = 3 / sqrt(10)
    array([ 0.      , -0.948683], dtype=float32)
"""

ADADELTA = declare(
    name="adadelta", class_name="Adadelta", rule=rule, unfused=unfused, doc=DOC,
    hypers=(LEARNING_RATE, Hyper("rho", 0.95, BETA), EPSILON, WEIGHT_DECAY),
    keras_signature=("learning_rate", "rho", "epsilon", "weight_decay"),
    flag_names=("flavor",), flags=lambda hp, conv: (flavor(conv, False),),
    all_flags=tuple((fl,) for fl in L2_FLAVORS),
    slots=(Slot("accumulated_grad", nonneg=True),
           Slot("accumulated_delta_var", nonneg=True)),
    scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="Adadelta",
               positional=(("lr", 1.0), ("rho", 0.9), ("eps", 1e-6), ("weight_decay", 0),
                           ("foreach", None)),
               keyword=(("capturable", False), ("maximize", False), ("differentiable", False)),
               state=(("accumulated_grad", "square_avg"),
                      ("accumulated_delta_var", "acc_delta")),
               peer="torch.optim:Adadelta",
               rule="E_g = rho E_g + (1 - rho) g^2;  d = sqrt(E_d + eps) / sqrt(E_g + eps) * g\n"
               "E_d = rho E_d + (1 - rho) d^2;  p -= lr d\n"
               "weight_decay: g += weight_decay * p first (L2)."),
    keras={"name": "Adadelta",
           "state_attributes": {"accumulated_grad": "_accumulated_grads",
                                "accumulated_delta_var": "_accumulated_delta_vars"}})

SPECS = (ADADELTA,)
__test__ = {"Adadelta": DOC}
