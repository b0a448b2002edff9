"""Adagrad (Duchi et al., 2011).

Keras (flavor KERAS): ``acc += g^2;  theta -= lr g / sqrt(acc + eps)``.
torch (flavor TORCH_L2): ``acc += g^2;  theta -= clr (g / (sqrt(acc) + eps))`` with
``clr = lr / (1 + (t - 1) lr_decay)``. The accumulator starts at
``initial_accumulator_value``.
"""

from __future__ import annotations

from ..constants import KERAS
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    DECAY_SCALARS,
    EPSILON,
    L2_FLAVORS,
    LEARNING_RATE,
    TORCH_ONLY,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    at_least,
    decay_scalars,
    declare,
    flavor,
)

SCALARS = (*DECAY_SCALARS, "eps", "step_size")


def scalars(hp, step, convention):
    lr = float(hp["learning_rate"])
    if convention == "torch":
        lr = lr / (1.0 + (step - 1) * float(hp["lr_decay"]))
    return {**decay_scalars(hp), "eps": float(hp["epsilon"]), "step_size": lr}


def rule(p, g, accumulator, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    accumulator = accumulator + g * g
    if f.flavor == KERAS:
        p = p - k.step_size * g / sqrt(accumulator + k.eps)
    else:
        p = p - k.step_size * (g / (sqrt(accumulator) + k.eps))
    return p, accumulator


def unfused(xp, p, g, s, k, f):
    acc = s["accumulator"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    acc += g * g
    if f.flavor == KERAS:
        p -= k.step_size * g / xp.sqrt(acc + k.eps)
    else:
        p -= k.step_size * (g / (xp.sqrt(acc) + k.eps))


DOC = r"""Adagrad (Duchi, Hazan & Singer, 2011, https://jmlr.org/papers/v12/duchi11a.html), fused.

Keras convention (default); the accumulator starts at ``initial_accumulator_value``::

    acc += g**2
    theta -= lr * g / sqrt(acc + epsilon)                 # epsilon inside the root

``convention="torch"`` reproduces ``torch.optim.Adagrad``: with ``t`` the 1-based step,
``theta -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(acc) + epsilon)`` (epsilon outside
the root). Weight decay is L2 there (``g += wd * theta``) and decoupled in the Keras
convention (``theta -= theta * wd * lr``, before the update). The defaults stay Keras'
in both conventions: torch's own are ``initial_accumulator_value=0``, ``epsilon=1e-10``.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    initial_accumulator_value: the accumulator's starting value, >= 0. 0.1.
    epsilon: >= 0. 1e-7.
    weight_decay: None or >= 0. None.
    lr_decay: torch only, >= 0: the step size decays as ``lr / (1 + (t - 1) lr_decay)``. 0.0.

Example (Keras' published values for one step)::

    >>> import numpy as np, fusedopt
    >>> w = np.array([1, 2, 3, 4], np.float32)
    >>> opt = fusedopt.Adagrad(learning_rate=0.5)
    >>> opt.apply_gradients([(np.array([1, 6, 7, 2], np.float32), w)])
    1
    >>> np.round(w, 4)
    array([0.5233, 1.5007, 2.5005, 3.5061], dtype=float32)
"""

ADAGRAD = declare(
    name="adagrad", class_name="Adagrad", rule=rule, unfused=unfused, doc=DOC,
    hypers=(LEARNING_RATE, Hyper("initial_accumulator_value", 0.1, at_least(0.0)), EPSILON,
            WEIGHT_DECAY, Hyper("lr_decay", 0.0, at_least(0.0), TORCH_ONLY)),
    keras_signature=("learning_rate", "initial_accumulator_value", "epsilon", "weight_decay"),
    flag_names=("flavor",), flags=lambda hp, conv: (flavor(conv, False),),
    all_flags=tuple((fl,) for fl in L2_FLAVORS),
    slots=(Slot("accumulator", nonneg=True),),
    slot_init=lambda hp: float(hp["initial_accumulator_value"]),
    scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="Adagrad",
               positional=(("lr", 1e-2), ("lr_decay", 0), ("weight_decay", 0),
                           ("initial_accumulator_value", 0), ("eps", 1e-10), ("foreach", None)),
               keyword=(("maximize", False), ("differentiable", False), ("fused", None)),
               state=(("accumulator", "sum"),), eager=True, peer="torch.optim:Adagrad",
               rule="s starts at initial_accumulator_value;  s += g^2\n"
               "p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)\n"
               "weight_decay: g += weight_decay * p first (L2)."),
    keras={"name": "Adagrad", "state_attributes": {"accumulator": "_accumulators"}})

SPECS = (ADAGRAD,)
__test__ = {"Adagrad": DOC}
