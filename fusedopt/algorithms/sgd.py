"""SGD, with momentum and Nesterov momentum, in Keras' and torch's forms.

Keras (flavor KERAS)::

    m = momentum m - lr g;  theta += m       (nesterov: theta += momentum m - lr g)

torch (flavor TORCH_L2)::

    b = g at a param's first step, then b = momentum b + (1 - dampening) g
    theta -= lr (g + momentum b if nesterov else b)

Without momentum both are theta -= lr g, and the variant has no slot.
"""

from __future__ import annotations

from ..constants import KERAS
from .rulelib import decay_in_place, weight_decay
from .spec import (
    DECAY_SCALARS,
    L2_FLAVORS,
    MOMENTUM,
    TORCH_ONLY,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    boolean,
    decay_scalars,
    declare,
    flavor,
    in_range,
    learning_rate,
)

SCALARS = (*DECAY_SCALARS, "momentum", "grad_scale")


def scalars(hp, step, convention):
    # torch's momentum buffer is g itself on the first step: with the buffer at zero,
    # grad_scale = 1 gives exactly that, and 1 - dampening afterwards.
    first = convention == "keras" or step == 1
    return {**decay_scalars(hp), "momentum": float(hp["momentum"]),
            "grad_scale": 1.0 if first else 1.0 - float(hp["dampening"])}


def rule(p, g, momentum, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    if not f.use_momentum:
        p = p - k.lr * g
    elif f.flavor == KERAS:
        momentum = momentum * k.momentum - g * k.lr
        if f.nesterov:
            p = p + (momentum * k.momentum - g * k.lr)
        else:
            p = p + momentum
    else:
        momentum = momentum * k.momentum + k.grad_scale * g
        if f.nesterov:
            p = p - k.lr * (g + k.momentum * momentum)
        else:
            p = p - k.lr * momentum
    return p, momentum


def unfused(xp, p, g, s, k, f):
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    if not f.use_momentum:
        p -= k.lr * g
        return
    m = s["momentum"]
    m *= k.momentum
    if f.flavor == KERAS:
        m -= g * k.lr
        p += m * k.momentum - g * k.lr if f.nesterov else m
    else:
        m += k.grad_scale * g  # grad_scale: 1 on the first step, 1 - dampening after
        p -= k.lr * (g + k.momentum * m if f.nesterov else m)


def check(hp, convention):
    if convention == "torch" and hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"]):
        raise ValueError("nesterov=True in the torch convention needs momentum > 0 and "
                         f"dampening == 0 (as torch.optim.SGD), got momentum={hp['momentum']!r}, "
                         f"dampening={hp['dampening']!r}")


def flags(hp, convention):
    use_momentum = int(hp["momentum"] != 0)
    return (flavor(convention, False), use_momentum, int(bool(hp["nesterov"])) & use_momentum)


DOC = r"""Stochastic gradient descent with optional (Nesterov) momentum, fused.

Keras convention (default), ``mu`` = ``momentum``::

    theta -= lr * g                                   # momentum == 0
    m = mu * m - lr * g                               # momentum > 0
    theta += m                                        # or, nesterov: theta += mu * m - lr * g

``convention="torch"`` reproduces ``torch.optim.SGD``: the buffer is ``b = g`` on its first
step and ``b = mu * b + (1 - dampening) * g`` after; ``theta -= lr * (g + mu * b)`` with
nesterov, else ``theta -= lr * b``. Weight decay is L2 there (``g += wd * theta``) and
decoupled in the Keras convention (``theta -= theta * wd * lr``, before the update).
The first step is counted by the optimizer (``iterations``): a param that gets its first
gradient later takes ``1 - dampening`` at once (the same unless ``dampening`` is set).

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.01.
    momentum: in [0, 1); 0 keeps no state. 0.0.
    nesterov: Nesterov momentum (Sutskever et al., 2013). False. With the torch
        convention it needs momentum > 0 and dampening == 0.
    weight_decay: None or >= 0. None.
    dampening: torch only, in [0, 1]: the buffer takes ``(1 - dampening) * g``. 0.0.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(3, np.float32)
    >>> opt = fusedopt.SGD(learning_rate=0.5)
    >>> opt.apply_gradients([(np.array([1, 2, 4], np.float32), w)])
    1
    >>> w
    array([ 0.5,  0. , -1. ], dtype=float32)
"""

SGD = declare(
    name="sgd", class_name="SGD", rule=rule, unfused=unfused, check=check, doc=DOC,
    hypers=(Hyper("learning_rate", 0.01, learning_rate), MOMENTUM,
            Hyper("nesterov", False, boolean), WEIGHT_DECAY,
            Hyper("dampening", 0.0, in_range(0.0, 1.0, closed_high=True), TORCH_ONLY)),
    keras_signature=("learning_rate", "momentum", "nesterov", "weight_decay"),
    flag_names=("flavor", "use_momentum", "nesterov"), flags=flags,
    all_flags=tuple((fl, 0, 0) for fl in L2_FLAVORS) + tuple(
        (fl, 1, n) for fl in L2_FLAVORS for n in (0, 1)),
    slots=(Slot("momentum", when="use_momentum"),),
    scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="SGD",
               positional=(("lr", 1e-3), ("momentum", 0), ("dampening", 0),
                           ("weight_decay", 0), ("nesterov", False)),
               keyword=(("maximize", False), ("foreach", None), ("differentiable", False),
                        ("fused", None)),
               state=(("momentum", "momentum_buffer"),), counts_steps=False,
               peer="torch.optim:SGD",
               rule="b = g at a param's first step, then b = momentum b + (1 - dampening) g\n"
               "p -= lr * (g + momentum b if nesterov else b)   (momentum 0: p -= lr g)\n"
               "weight_decay: g += weight_decay * p first (L2)."),
    keras={"name": "SGD", "state_attributes": {"momentum": "momentums"}})

SPECS = (SGD,)
__test__ = {"SGD": DOC}
