"""Adamax, Adam's infinity-norm variant (Kingma & Ba, 2015).

Keras (flavor KERAS): ``m += (g - m)(1 - b1);  u = max(b2 u, |g|);
theta -= lr m / ((u + eps)(1 - b1^t))``.
torch (flavor TORCH_L2): ``u = max(b2 u, |g| + eps);  theta -= lr / (1 - b1^t) * (m / u)``.
"""

from __future__ import annotations

from ..constants import KERAS, TORCH_L2
from .rulelib import decay_in_place, weight_decay
from .spec import ADAM_LIKE, DECAY_SCALARS, WEIGHT_DECAY, Slot, decay_scalars, declare, flavor

SCALARS = (*DECAY_SCALARS, "b2", "one_minus_b1", "eps", "bc1", "step_size")


def scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    bc1 = 1.0 - b1**step
    return {**decay_scalars(hp), "b2": b2, "one_minus_b1": 1.0 - b1,
            "eps": float(hp["epsilon"]), "bc1": bc1,
            "step_size": float(hp["learning_rate"]) / bc1}


def rule(p, g, m, u, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m = m + (g - m) * k.one_minus_b1
    scaled = k.b2 * u
    if f.flavor == KERAS:
        a = abs(g)
        u = scaled if scaled > a else a
        p = p - k.lr * m / ((u + k.eps) * k.bc1)
    else:
        a = abs(g) + k.eps
        u = scaled if scaled > a else a
        p = p - k.step_size * (m / u)
    return p, m, u


def unfused(xp, p, g, s, k, f):
    m, u = s["m"], s["u"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m += (g - m) * k.one_minus_b1
    u *= k.b2
    if f.flavor == KERAS:
        xp.maximum(u, xp.abs(g), out=u)
        p -= k.lr * m / ((u + k.eps) * k.bc1)
    else:
        xp.maximum(u, xp.abs(g) + k.eps, out=u)
        p -= k.step_size * (m / u)


DOC = r"""Adamax, Adam with the infinity norm (Kingma & Ba, 2015, section 7.1), fused.

Keras convention (default), with ``t`` the 1-based step::

    m += (g - m) * (1 - beta_1)
    u = max(beta_2 * u, |g|)
    theta -= lr * m / ((1 - beta_1**t) * (u + epsilon))

``convention="torch"`` reproduces ``torch.optim.Adamax``: epsilon goes inside the max,
``u = max(beta_2 * u, |g| + epsilon)``, then ``theta -= lr / (1 - beta_1**t) * m / u``;
``weight_decay`` is L2 there (``g += wd * theta``) and decoupled in Keras
(``theta -= theta * wd * lr`` before the update).

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001
        (torch's own default is 0.002).
    beta_1: decay of the first moment, in [0, 1). 0.9.
    beta_2: decay of the infinity norm, in [0, 1). 0.999.
    epsilon: >= 0. 1e-7 (torch's own default is 1e-8).
    weight_decay: None or >= 0. None.
    clipnorm, clipvalue, global_clipnorm: Keras' gradient clipping (at most one).

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(2, np.float32)
    >>> opt = fusedopt.Adamax(learning_rate=0.5, epsilon=0.0)
    >>> opt.apply_gradients([(np.array([2, -4], np.float32), w)])
    1
    >>> w
    array([0.5, 1.5], dtype=float32)
"""

ADAMAX = declare(
    name="adamax", class_name="Adamax", rule=rule, unfused=unfused, doc=DOC,
    hypers=(*ADAM_LIKE, WEIGHT_DECAY),
    keras_signature=("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
    flag_names=("flavor",), flags=lambda hp, conv: (flavor(conv, False),),
    all_flags=((KERAS,), (TORCH_L2,)),
    slots=(Slot("m"), Slot("u", nonneg=True)), scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="Adamax",
               positional=(("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8),
                           ("weight_decay", 0), ("foreach", None)),
               keyword=(("maximize", False), ("differentiable", False), ("capturable", False)),
               state=(("m", "exp_avg"), ("u", "exp_inf")), peer="torch.optim:Adamax",
               rule="m = b1 m + (1 - b1) g;  u = max(b2 u, |g| + eps)\n"
               "p -= lr / (1 - b1^t) * m / u\n"
               "weight_decay: g += weight_decay * p first (L2)."),
    keras={"name": "Adamax", "state_attributes": {"m": "_m", "u": "_u"}})

SPECS = (ADAMAX,)
__test__ = {"Adamax": DOC}
