"""FTRL-Proximal, follow the regularized leader (McMahan et al., 2013), as keras.optimizers.Ftrl
has it.

    n = acc + g^2;  q = -learning_rate_power
    linear += g + 2 l2_shrinkage theta - (n^q - acc^q) / lr * theta
    theta = (clip(linear, -l1, l1) - linear) / (n^q / lr + 2 (l2 + beta / (2 lr)));  acc = n

The powers are taken in the compute type, as Keras takes them in the variable's dtype: for
the default q = 1/2 square roots (the ``sqrt_power`` variant: correctly rounded, and
cheaper than a power), else ``power``. The accumulator starts at
``initial_accumulator_value`` and the linear term at 0: every slot starts at the
accumulator's value (one initial value for all, as stored: a 16-bit state holds it rounded,
as Keras' variable of that dtype would), and the rule takes 0 for the linear term at the
first step (``first``, a host scalar) instead of the slot's. torch has no Ftrl: the torch
door takes TensorFlow's raw-op names (``lr``, ``lr_power``, ``l1``, ``l2``,
``l2_shrinkage``) for Keras' arguments and runs Keras' rule, weight decay included.
"""

from __future__ import annotations

import math

from ..constants import KERAS
from .rulelib import decay_in_place, power, sqrt, weight_decay
from .spec import (
    DECAY_SCALARS,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    at_least,
    decay_scalars,
    declare,
)

SCALARS = (*DECAY_SCALARS, "power", "first", "zero", "l1", "l2_twice", "shrinkage")

#: Keras' default learning_rate_power, whose power is a square root.
SQRT_POWER = -0.5


def scalars(hp, step, convention):
    lr, beta = float(hp["learning_rate"]), float(hp["beta"])
    # beta / (2 lr): a schedule's lr of 0 gives inf, as Keras' float math would, not a raise.
    l2 = float(hp["l2_regularization_strength"]) + (
        (beta / (2.0 * lr) if lr else math.copysign(math.inf, beta)) if beta else 0.0)
    return {**decay_scalars(hp), "power": -float(hp["learning_rate_power"]),
            "first": float(step == 1), "zero": 0.0,
            "l1": float(hp["l1_regularization_strength"]), "l2_twice": 2.0 * l2,
            "shrinkage": 2.0 * float(hp["l2_shrinkage_regularization_strength"])}


def rule(p, g, accumulator, linear, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    before = accumulator
    accumulator = before + g * g
    linear = k.zero if k.first > 0 else linear  # a scalar zero: a rule has no float literals
    if f.sqrt_power:
        grown = sqrt(accumulator)
        sigma = (grown - sqrt(before)) / k.lr
    else:
        grown = power(accumulator, k.power)
        sigma = (grown - power(before, k.power)) / k.lr
    linear = linear + (g + k.shrinkage * p - sigma * p)
    quadratic = grown / k.lr + k.l2_twice
    clipped = -k.l1 if linear < -k.l1 else (k.l1 if linear > k.l1 else linear)
    p = (clipped - linear) / quadratic
    return p, accumulator, linear


def unfused(xp, p, g, s, k, f):
    acc, linear = s["accumulator"], s["linear"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    if k.first > 0:
        linear[...] = 0
    root = xp.sqrt if f.sqrt_power else (lambda x: xp.power(x, x.dtype.type(k.power)))
    before = root(acc)
    shrunk = g + k.shrinkage * p
    acc += g * g
    grown = root(acc)
    linear += shrunk - (grown - before) / k.lr * p
    p[...] = (xp.clip(linear, -k.l1, k.l1) - linear) / (grown / k.lr + k.l2_twice)


def _nonpositive(value):
    ok = at_least(-math.inf)(value) is None and value <= 0
    return None if ok else "must be a finite number <= 0"


def _finite(value):
    return at_least(-math.inf)(value) and "must be a finite number"


def _positive_rate(value):
    # Keras does not check, but every Ftrl step divides by the learning rate.
    if callable(value) or (at_least(0.0)(value) is None and value > 0):
        return None
    return "must be a finite number > 0 (Ftrl divides by it), or a schedule"


DOC = r"""FTRL-Proximal (McMahan et al., 2013, https://research.google/pubs/pub41159/), fused.

Keras' Ftrl: per element, an accumulator of squared grads ``n`` and a linear term ``z``; the
param is the closed-form minimizer of the regularized linear model::

    q = -learning_rate_power
    z += g + 2 * l2_shrinkage * theta - ((acc + g**2)**q - acc**q) / lr * theta
    acc += g**2
    theta = (clip(z, -l1, l1) - z) / (acc**q / lr + 2 * (l2 + beta / (2 * lr)))

with ``weight_decay`` applied to theta first, as Keras does (``theta -= theta * wd * lr``).
The powers are taken in the param's compute type, as Keras takes them in the variable's
(a square root for the default q = 1/2). torch has no Ftrl: ``convention="torch"`` runs the
same rule.

Args:
    learning_rate: step size, > 0, or a callable of ``iterations`` (a schedule). 0.001.
    learning_rate_power: <= 0; -0.5 gives Adagrad-like step sizes. -0.5.
    initial_accumulator_value: the accumulator's starting value, >= 0. 0.1.
    l1_regularization_strength, l2_regularization_strength: >= 0. 0.0.
    l2_shrinkage_regularization_strength: a magnitude penalty on the grad side, >= 0. 0.0.
    beta: added to the l2 term as beta / (2 lr). 0.0.
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.zeros(2, np.float32)
    >>> opt = fusedopt.Ftrl(learning_rate=0.5, initial_accumulator_value=0.0)
    >>> opt.apply_gradients([(np.array([1, -2], np.float32), w)])
    1
    >>> w    # z = g, acc = g**2: theta = -z / (|g| / lr) = -lr * sign(g)
    array([-0.5,  0.5], dtype=float32)
"""

FTRL = declare(
    name="ftrl", class_name="Ftrl", rule=rule, unfused=unfused, doc=DOC,
    hypers=(Hyper("learning_rate", 0.001, _positive_rate),
            Hyper("learning_rate_power", SQRT_POWER, _nonpositive),
            Hyper("initial_accumulator_value", 0.1, at_least(0.0)),
            Hyper("l1_regularization_strength", 0.0, at_least(0.0)),
            Hyper("l2_regularization_strength", 0.0, at_least(0.0)),
            Hyper("l2_shrinkage_regularization_strength", 0.0, at_least(0.0)),
            Hyper("beta", 0.0, _finite), WEIGHT_DECAY),
    flag_names=("flavor", "sqrt_power"),
    flags=lambda hp, conv: (KERAS, int(float(hp["learning_rate_power"]) == SQRT_POWER)),
    all_flags=((KERAS, 1), (KERAS, 0)),
    slots=(Slot("accumulator"), Slot("linear")),
    slot_init=lambda hp: float(hp["initial_accumulator_value"]),
    scalar_names=SCALARS, scalar_fn=scalars,
    # No torch.optim.Ftrl: TensorFlow's raw-op names (ApplyFtrlV2's lr, l1, l2,
    # l2_shrinkage, lr_power) for Keras' arguments, Keras' defaults and Keras' rule.
    torch=dict(name="Ftrl",
               positional=(("lr", 1e-3), ("lr_power", SQRT_POWER),
                           ("initial_accumulator_value", 0.1), ("l1", 0.0), ("l2", 0.0),
                           ("l2_shrinkage", 0.0), ("beta", 0.0), ("weight_decay", 0.0)),
               keyword=(("maximize", False),),
               renames=(("lr_power", "learning_rate_power"),
                        ("l1", "l1_regularization_strength"),
                        ("l2", "l2_regularization_strength"),
                        ("l2_shrinkage", "l2_shrinkage_regularization_strength")),
               state=(("accumulator", "accumulator"), ("linear", "linear")), peer="",
               rule="n = accumulator + g^2 (accumulator starts at initial_accumulator_value)\n"
               "linear += g + 2 l2_shrinkage p - (n^-lr_power - accumulator^-lr_power) / lr * p\n"
               "p = (clamp(linear, -l1, l1) - linear) / (n^-lr_power / lr + 2 (l2 + beta / "
               "(2 lr)));  accumulator = n\n"
               "weight_decay: p -= p * weight_decay * lr first, as Keras decays "
               "(McMahan et al., 2013)"),
    keras={"name": "Ftrl",
           "state_attributes": {"accumulator": "_accumulators", "linear": "_linears"}})

SPECS = (FTRL,)
__test__ = {"Ftrl": DOC}
