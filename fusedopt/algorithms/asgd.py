"""ASGD, averaged stochastic gradient descent (Polyak & Juditsky, 1992), as torch.optim.ASGD
has it (its single-tensor step).

At 1-based step t, with eta_t the step size and mu_t the averaging weight::

    theta *= 1 - lambd eta_t;  theta -= eta_t g
    ax = theta if mu_t == 1 else ax + mu_t (theta - ax)
    eta_1 = lr,  eta_t = lr / (1 + lambd lr (t - 1))^alpha
    mu_1 = 1,    mu_t = 1 / max(1, t - 1 - t0)

torch computes eta and mu at the end of each step and keeps them as float32 state; here they
are host scalars of the step count, in float64 and (torch convention) rounded to float32 as
torch's state rounds them, so that the state entries ``eta`` and ``mu`` of the torch door
are derived, not stored. The lr they use is the step's: torch's lag one step behind an lr
that changes between steps (a schedule), fusedopt's do not. Weight decay: L2 in torch
(``g += wd theta`` first); Keras-style decoupled ``theta -= theta wd lr`` in the Keras
convention.
"""

from __future__ import annotations

import numpy as np

from ..constants import KERAS, TORCH_L2
from .rulelib import decay_in_place, weight_decay
from .spec import (
    DECAY_SCALARS,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    StateScalar,
    at_least,
    decay_scalars,
    declare,
    flavor,
    learning_rate,
)

SCALARS = (*DECAY_SCALARS, "eta", "decay", "mu")


def asgd_eta(hp, steps: int, float32: bool = False) -> float:
    """eta after ``steps`` steps: the step size of step ``steps + 1`` (float32: as torch
    keeps it)."""
    lr = float(hp["learning_rate"])
    try:
        eta = lr if steps == 0 else lr / (1.0 + float(hp["lambd"]) * lr * steps) ** float(
            hp["alpha"])
    except OverflowError:  # the power is beyond float64: the step size is 0 to any float
        eta = 0.0
    return float(np.float32(eta)) if float32 else eta


def asgd_mu(hp, steps: int, float32: bool = False) -> float:
    """mu after ``steps`` steps: the averaging weight of step ``steps + 1``."""
    mu = 1.0 if steps == 0 else 1.0 / max(1.0, steps - float(hp["t0"]))
    return float(np.float32(mu)) if float32 else mu


def scalars(hp, step, convention):
    rounded = convention == "torch"
    eta = asgd_eta(hp, step - 1, rounded)
    return {**decay_scalars(hp), "eta": eta, "decay": 1.0 - float(hp["lambd"]) * eta,
            "mu": asgd_mu(hp, step - 1, rounded)}


def rule(p, g, ax, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    p = p * k.decay
    p = p - k.eta * g
    # mu == 1 (until t0 steps have passed) copies: ax + (theta - ax) would round.
    ax = p if k.mu == 1 else ax + (p - ax) * k.mu
    return p, ax


def unfused(xp, p, g, s, k, f):
    ax = s["ax"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    p *= k.decay
    p -= k.eta * g
    if k.mu == 1:
        ax[...] = p
    else:
        ax += (p - ax) * k.mu


def _torch_eta(hp, steps):
    return asgd_eta(hp, steps, float32=True)


def _torch_mu(hp, steps):
    return asgd_mu(hp, steps, float32=True)


DOC = r"""ASGD, averaged stochastic gradient descent (Polyak & Juditsky, 1992,
https://doi.org/10.1137/0330046), fused.

SGD with a decaying step size and a running average ``ax`` of the params (the average to
evaluate with), which starts after ``t0`` steps::

    eta_t = lr / (1 + lambd * lr * (t - 1))**alpha          # eta_1 = lr
    theta *= 1 - lambd * eta_t;  theta -= eta_t * g
    ax = theta                          while t <= t0 + 2
    ax += (theta - ax) / (t - 1 - t0)   after

As ``torch.optim.ASGD`` (``convention="torch"``, L2 weight decay, eta and mu rounded to
float32 as torch keeps them); the Keras convention decays as Keras' optimizers do,
``theta -= theta * weight_decay * lr``, first.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.01.
    lambd: decay term, >= 0. 1e-4.
    alpha: power of the step size's decay, >= 0. 0.75.
    t0: the step after which averaging starts, >= 0. 1e6.
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(2, np.float32)
    >>> opt = fusedopt.ASGD(learning_rate=0.5, lambd=0.0)
    >>> opt.apply_gradients([(np.array([1, -2], np.float32), w)])
    1
    >>> w
    array([0.5, 2. ], dtype=float32)
"""

ASGD = declare(
    name="asgd", class_name="ASGD", rule=rule, unfused=unfused, doc=DOC,
    hypers=(Hyper("learning_rate", 0.01, learning_rate), Hyper("lambd", 1e-4, at_least(0.0)),
            Hyper("alpha", 0.75, at_least(0.0)), Hyper("t0", 1e6, at_least(0.0)),
            WEIGHT_DECAY),
    keras_signature=("learning_rate", "lambd", "alpha", "t0", "weight_decay"),
    flag_names=("flavor",), flags=lambda hp, conv: (flavor(conv, False),),
    all_flags=((KERAS,), (TORCH_L2,)),
    slots=(Slot("ax"),), scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="ASGD",
               positional=(("lr", 1e-2), ("lambd", 1e-4), ("alpha", 0.75), ("t0", 1e6),
                           ("weight_decay", 0), ("foreach", None), ("maximize", False),
                           ("differentiable", False), ("capturable", False)),
               keyword=(), renames=(("alpha", "alpha"),),
               state=(("ax", "ax"),), peer="torch.optim:ASGD",
               derived=(StateScalar("eta", _torch_eta, "the step size lr / (1 + lambd lr "
                                    "t)^alpha", rel_tol=1e-6, abs_tol=0.0),
                        StateScalar("mu", _torch_mu, "the averaging weight "
                                    "1 / max(1, t - t0)", rel_tol=1e-6, abs_tol=0.0)),
               rule="eta, mu: lr and 1 at a param's first step; after step t, "
               "eta = lr / (1 + lambd lr t)^alpha, mu = 1 / max(1, t - t0)\n"
               "p *= 1 - lambd eta;  p -= eta g;  ax = p if mu == 1 else ax + mu (p - ax)\n"
               "weight_decay: g += weight_decay * p first (L2)."))

SPECS = (ASGD,)
__test__ = {"ASGD": DOC}
