"""RMSprop, plain, centered and/or with momentum (Hinton, 2012; Graves, 2013).

Slots, in order: ``velocity`` (the mean square v), ``momentum`` if the variant uses
momentum, ``average_gradient`` (gbar) if centered. Both conventions::

    v = rho v + (1 - rho) g^2;  centered: gbar moves toward g by (1 - rho), ms = v - gbar^2,
    else ms = v

Keras (flavor KERAS), epsilon inside the root::

    inc = lr g / sqrt(ms + eps);  momentum: mom = mu mom + inc, theta -= mom; else theta -= inc

torch (flavor TORCH_L2), epsilon outside::

    avg = sqrt(ms) + eps;  momentum: b = mu b + g / avg, theta -= lr b; else theta -= lr g / avg
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
    MOMENTUM,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    boolean,
    decay_scalars,
    declare,
    flavor,
)

SCALARS = (*DECAY_SCALARS, "rho", "one_minus_rho", "momentum", "eps")


def scalars(hp, step, convention):
    rho = float(hp["rho"])
    return {**decay_scalars(hp), "rho": rho, "one_minus_rho": 1.0 - rho,
            "momentum": float(hp["momentum"]), "eps": float(hp["epsilon"])}


def rule(p, g, velocity, momentum, average_gradient, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    velocity = k.rho * velocity + k.one_minus_rho * (g * g)
    ms = velocity
    if f.centered:
        # torch moves gbar with lerp (gbar + w (g - gbar)); Keras with a weighted sum.
        if f.flavor == KERAS:
            average_gradient = k.rho * average_gradient + k.one_minus_rho * g
        else:
            average_gradient = average_gradient + k.one_minus_rho * (g - average_gradient)
        ms = velocity - average_gradient * average_gradient
    if f.flavor == KERAS:
        inc = k.lr * g / sqrt(ms + k.eps)
        if f.use_momentum:
            momentum = k.momentum * momentum + inc
            p = p - momentum
        else:
            p = p - inc
    else:
        avg = sqrt(ms) + k.eps
        if f.use_momentum:
            momentum = k.momentum * momentum + g / avg
            p = p - k.lr * momentum
        else:
            p = p - k.lr * (g / avg)
    return p, velocity, momentum, average_gradient


def unfused(xp, p, g, s, k, f):
    v = s["velocity"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    v *= k.rho
    v += k.one_minus_rho * (g * g)
    ms = v
    if f.centered:
        gbar = s["average_gradient"]
        if f.flavor == KERAS:
            gbar *= k.rho
            gbar += k.one_minus_rho * g
        else:
            gbar += k.one_minus_rho * (g - gbar)
        ms = v - gbar * gbar
    if f.flavor == KERAS:
        step = k.lr * g / xp.sqrt(ms + k.eps)
    else:
        step = g / (xp.sqrt(ms) + k.eps)
    if f.use_momentum:
        mom = s["momentum"]
        mom *= k.momentum
        mom += step
        step = mom
    if f.flavor == KERAS:
        p -= step
    else:
        p -= k.lr * step


DOC = r"""RMSprop (Hinton, Coursera lecture 6e, 2012), fused; centered as in Graves (2013).

Keras convention (default)::

    v = rho * v + (1 - rho) * g**2
    ms = v - gbar**2, gbar = rho * gbar + (1 - rho) * g   # centered
    ms = v                                                # otherwise
    inc = lr * g / sqrt(ms + epsilon)                     # epsilon inside the root
    mom = momentum * mom + inc; theta -= mom              # momentum > 0
    theta -= inc                                          # otherwise

``convention="torch"`` reproduces ``torch.optim.RMSprop`` (whose ``alpha`` is ``rho``
here): ``avg = sqrt(ms) + epsilon`` (epsilon outside the root), then with momentum
``b = momentum * b + g / avg; theta -= lr * b``, else ``theta -= lr * g / avg``. Weight
decay is L2 there (``g += wd * theta``) and decoupled in the Keras convention
(``theta -= theta * wd * lr``, before the update).

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    rho: decay of the mean square (torch's ``alpha``), in [0, 1). 0.9 (torch: 0.99).
    momentum: in [0, 1); 0 keeps no momentum buffer. 0.0.
    epsilon: >= 0. 1e-7 (torch's own default is 1e-8).
    centered: divide by the estimated variance instead of the mean square. False.
    weight_decay: None or >= 0. None.

Example (Keras' published values for one step)::

    >>> import numpy as np, fusedopt
    >>> w = np.array([1, 2, 3, 4], np.float32)
    >>> opt = fusedopt.RMSprop(learning_rate=0.5)
    >>> opt.apply_gradients([(np.array([1, 6, 7, 2], np.float32), w)])
    1
    >>> np.round(w, 4)
    array([-0.5811,  0.4189,  1.4189,  2.4189], dtype=float32)
"""

RMSPROP = declare(
    name="rmsprop", class_name="RMSprop", keras_name="rm_sprop", rule=rule, unfused=unfused,
    doc=DOC,
    hypers=(LEARNING_RATE, Hyper("rho", 0.9, BETA), MOMENTUM, EPSILON,
            Hyper("centered", False, boolean), WEIGHT_DECAY),
    keras_signature=("learning_rate", "rho", "momentum", "epsilon", "centered",
                     "weight_decay"),
    flag_names=("flavor", "use_momentum", "centered"),
    flags=lambda hp, conv: (flavor(conv, False), int(hp["momentum"] > 0), int(hp["centered"])),
    all_flags=tuple((fl, m, c) for fl in L2_FLAVORS for m in (0, 1) for c in (0, 1)),
    slots=(Slot("velocity", nonneg=True), Slot("momentum", when="use_momentum"),
           Slot("average_gradient", when="centered")),
    scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="RMSprop",
               positional=(("lr", 1e-2), ("alpha", 0.99), ("eps", 1e-8), ("weight_decay", 0),
                           ("momentum", 0), ("centered", False), ("capturable", False),
                           ("foreach", None), ("maximize", False), ("differentiable", False)),
               keyword=(),
               state=(("velocity", "square_avg"), ("momentum", "momentum_buffer"),
                      ("average_gradient", "grad_avg")),
               peer="torch.optim:RMSprop",
               rule="v = alpha v + (1 - alpha) g^2;  centered: a = alpha a + (1 - alpha) g,\n"
               "d = sqrt(v - a^2) + eps, else d = sqrt(v) + eps\n"
               "momentum: b = momentum b + g / d, p -= lr b;  else p -= lr g / d\n"
               "weight_decay: g += weight_decay * p first (L2)."),
    keras={"name": "RMSprop",
           "state_attributes": {"velocity": "_velocities", "momentum": "_momentums",
                                "average_gradient": "_average_gradients"}})

SPECS = (RMSPROP,)
__test__ = {"RMSprop": DOC}
