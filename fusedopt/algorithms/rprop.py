"""Rprop, resilient backpropagation (Riedmiller & Braun, 1993), as torch.optim.Rprop has it.

Each element keeps its own step size and the grad it saw last::

    s = g * prev
    step_size = clamp(step_size * (eta_plus if s > 0 else eta_minus if s < 0 else 1),
                      min_step_size, max_step_size)
    g = 0 where s < 0                    # a sign change: no move, and no memory of it
    theta -= sign(g) * step_size;  prev = g

A NaN grad moves nothing and leaves the step size as it was (torch's ``sign(NaN)`` is 0), and
is kept as ``prev``, as torch keeps it.
The step size starts at the learning rate: the rule takes ``lr`` itself at a param's first
step (``first``, a host scalar), so the slot needs no initial value of its own. torch's Rprop
has no weight decay; the Keras convention decays as Keras' optimizers do,
``theta -= theta * wd * lr``, before the update.
"""

from __future__ import annotations

from ..constants import KERAS, TORCH_L2
from .rulelib import decay_in_place, weight_decay
from .spec import (
    DECAY_SCALARS,
    Hyper,
    Slot,
    at_least,
    decay_scalars,
    declare,
    flavor,
    learning_rate,
    optional,
)

SCALARS = (*DECAY_SCALARS, "eta_minus", "eta_plus", "min_step_size", "max_step_size", "first",
           "zero")


def scalars(hp, step, convention):
    return {**decay_scalars(hp), "eta_minus": float(hp["eta_minus"]),
            "eta_plus": float(hp["eta_plus"]), "min_step_size": float(hp["min_step_size"]),
            "max_step_size": float(hp["max_step_size"]), "first": float(step == 1),
            "zero": 0.0}


def rule(p, g, prev, step_size, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    size = k.lr if k.first > 0 else step_size
    agree = g * prev
    # As torch: a NaN agree (a NaN grad or prev) keeps the step size, and a NaN grad moves
    # nothing (torch's sign(NaN) is 0) but is kept as prev.
    size = size * k.eta_plus if agree > 0 else (size * k.eta_minus if agree < 0 else size)
    step_size = k.min_step_size if size < k.min_step_size else (
        k.max_step_size if size > k.max_step_size else size)
    prev = k.zero if agree < 0 else g  # a scalar zero: a rule has no float literals
    step = step_size if prev > 0 else (-step_size if prev < 0 else k.zero)
    p = p - step
    return p, prev, step_size


def unfused(xp, p, g, s, k, f):
    prev, size = s["prev"], s["step_size"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    if k.first > 0:
        size[...] = k.lr
    product = g * prev
    size *= xp.where(product > 0, k.eta_plus, xp.where(product < 0, k.eta_minus, 1))
    xp.clip(size, k.min_step_size, k.max_step_size, out=size)
    g = xp.where(product < 0, 0, g).astype(p.dtype)
    p -= xp.nan_to_num(xp.sign(g), nan=0) * size
    prev[...] = g


def _eta_minus(value):
    ok = at_least(0.0)(value) is None and 0 < value < 1
    return None if ok else "must be in (0, 1) (the factor a step size shrinks by)"


def _eta_plus(value):
    ok = at_least(0.0)(value) is None and value > 1
    return None if ok else "must be a finite number > 1 (the factor a step size grows by)"


def check(hp, convention):
    low, high = hp["min_step_size"], hp["max_step_size"]
    if low > high:
        raise ValueError(f"min_step_size must be <= max_step_size (every step size is clamped "
                         f"to [min_step_size, max_step_size]), got {low!r} > {high!r}")


DOC = r"""Rprop, resilient backpropagation (Riedmiller & Braun, 1993,
https://doi.org/10.1109/ICNN.1993.298623), fused.

Each element moves by its own step size, in the direction opposite its grad's sign; the step
size grows by ``eta_plus`` while the grad keeps its sign and shrinks by ``eta_minus`` when the
sign flips (and that step does not move, nor is the flipped grad remembered)::

    s = g * prev
    step_size = clip(step_size * (eta_plus if s > 0 else eta_minus if s < 0 else 1),
                     min_step_size, max_step_size)       # starts at learning_rate
    g = 0 where s < 0
    theta -= sign(g) * step_size;  prev = g

As ``torch.optim.Rprop`` (``convention="torch"``, which has no weight decay); the Keras
convention decays as Keras' optimizers do, ``theta -= theta * weight_decay * lr``, first.

Args:
    learning_rate: the initial step size, or a callable of ``iterations``. 0.01.
    eta_minus: shrink factor, in (0, 1). 0.5.
    eta_plus: growth factor, > 1. 1.2.
    min_step_size, max_step_size: the step sizes' bounds, >= 0. 1e-6, 50.
    weight_decay: Keras convention only, None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.zeros(3, np.float32)
    >>> opt = fusedopt.Rprop(learning_rate=0.5)
    >>> for _ in range(2):
    ...     _ = opt.apply_gradients([(np.array([1, -1, 0], np.float32), w)])
    >>> w    # 0.5, then 0.5 * 1.2 where the sign held
    array([-1.1,  1.1,  0. ], dtype=float32)
"""

RPROP = declare(
    name="rprop", class_name="Rprop", rule=rule, unfused=unfused, check=check, doc=DOC,
    hypers=(Hyper("learning_rate", 0.01, learning_rate), Hyper("eta_minus", 0.5, _eta_minus),
            Hyper("eta_plus", 1.2, _eta_plus), Hyper("min_step_size", 1e-6, at_least(0.0)),
            Hyper("max_step_size", 50.0, at_least(0.0)),
            Hyper("weight_decay", None, optional(at_least(0.0)), frozenset({"keras"}))),
    keras_signature=("learning_rate", "eta_minus", "eta_plus", "min_step_size",
                     "max_step_size", "weight_decay"),
    flag_names=("flavor",), flags=lambda hp, conv: (flavor(conv, False),),
    all_flags=((KERAS,), (TORCH_L2,)),
    slots=(Slot("prev"), Slot("step_size")), scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="Rprop",
               positional=(("lr", 1e-2), ("etas", (0.5, 1.2)), ("step_sizes", (1e-6, 50))),
               keyword=(("capturable", False), ("foreach", None), ("maximize", False),
                        ("differentiable", False)),
               tuples=(("etas", ("eta_minus", "eta_plus")),
                       ("step_sizes", ("min_step_size", "max_step_size"))),
               state=(("prev", "prev"), ("step_size", "step_size")), peer="torch.optim:Rprop",
               rule="s = g * prev;  step_size = clamp(step_size * (etaplus if s > 0 else "
               "etaminus if s < 0 else 1), *step_sizes)\n(step_size starts at lr)  "
               "g = 0 where s < 0;  p -= sign(g) * step_size;  prev = g"))

SPECS = (RPROP,)
__test__ = {"Rprop": DOC}
