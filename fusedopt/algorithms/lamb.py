"""LAMB, Adam's update scaled per tensor by a trust ratio (You et al., 2020,
https://arxiv.org/abs/1904.00962).

Keras (``keras.optimizers.Lamb``; weight decay, when set, is Keras' own, applied first;
``1 - b^t`` in float32, as Keras computes it: :func:`keras_correction`)::

    theta -= theta * wd * lr
    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    r = ||theta|| / ||u|| when both norms are > 0, else 1
    theta -= r * lr * u

torch convention (the paper's weight decay, inside the update and so inside ||u||)::

    m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * theta
    theta -= r * lr * u

The norms are of whole tensors, so a step is two passes over memory (besides the grad
pre-pass when clipping by norm): the reduction phase (fusedopt/engine/reductions.py)
reads theta, g, m and v and sums theta^2 and u^2 per tensor, recomputing the new moments
without writing them; the element pass then recomputes them, writes them and steps theta
with ``trust_lr = r * lr``, one scalar per tensor. In float32: 16 + 28 = 44 bytes per
element. The fewest bytes any LAMB step can move is 40: theta is needed whole before its
first write (its norm) and again to be updated, so it is read twice, and the update needs
the new moments of every element before the first write, so they are either written by
the first pass and read again (+8) or recomputed from g, m and v (+12). fusedopt
recomputes: the reduction phase writes nothing, so every storage (stochastic rounding,
Kahan, masters) keeps the one element pass it is checked in, and nothing changes before
the step's last check.
"""

from __future__ import annotations

import numpy as np

from ..constants import KERAS, TORCH_DECOUPLED
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    ADAM_LIKE,
    DECAY_SCALARS,
    WEIGHT_DECAY,
    Reductions,
    Slot,
    decay_scalars,
    declare,
)

SCALARS = (*DECAY_SCALARS, "b2", "one_minus_b1", "one_minus_b2", "bc1", "bc2", "eps")


def keras_correction(beta: float, step: int) -> float:
    """``1 - beta**t`` as Keras' Lamb computes it for float32 variables: in float32 (the
    power is float32's correctly rounded one, torch's and NumPy's alike). LAMB carries
    that rounding in full where the trust ratio is 1 (a zero-initialised bias: u is off
    by 6.6e-6 at beta_2 = 0.999, step 1), so the Keras convention takes Keras' values."""
    return float(np.float32(1.0) - np.float32(beta) ** np.float32(step))


def scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    if convention == "keras":
        bc1, bc2 = keras_correction(b1, step), keras_correction(b2, step)
    else:
        bc1, bc2 = 1.0 - b1**step, 1.0 - b2**step
    return {**decay_scalars(hp), "b2": b2, "one_minus_b1": 1.0 - b1,
            "one_minus_b2": 1.0 - b2, "bc1": bc1, "bc2": bc2, "eps": float(hp["epsilon"])}


def rule(p, g, m, v, k, f):
    if f.flavor == KERAS:
        p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
        m = m + (g - m) * k.one_minus_b1
        v = v + (g * g - v) * k.one_minus_b2
        u = (m / k.bc1) / (sqrt(v / k.bc2) + k.eps)
    else:
        m = m + k.one_minus_b1 * (g - m)
        v = k.b2 * v + k.one_minus_b2 * (g * g)
        u = (m / k.bc1) / (sqrt(v / k.bc2) + k.eps) + k.wd * p
    p = p - k.trust_lr * u
    return p, m, v


def norms(p, g, m, v, k, f):
    """The terms of ||theta||^2 and ||u||^2: the rule's theta and u, nothing stored."""
    if f.flavor == KERAS:
        p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
        m = m + (g - m) * k.one_minus_b1
        v = v + (g * g - v) * k.one_minus_b2
        u = (m / k.bc1) / (sqrt(v / k.bc2) + k.eps)
    else:
        m = m + k.one_minus_b1 * (g - m)
        v = k.b2 * v + k.one_minus_b2 * (g * g)
        u = (m / k.bc1) / (sqrt(v / k.bc2) + k.eps) + k.wd * p
    return p * p, u * u


def _update(xp, p, g, m, v, k, f):
    """u of the rule, as arrays; m and v updated in place; p decayed in place (Keras)."""
    if f.flavor == KERAS:
        g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
        m += (g - m) * k.one_minus_b1
        v += (g * g - v) * k.one_minus_b2
        return (m / k.bc1) / (xp.sqrt(v / k.bc2) + k.eps)
    m += k.one_minus_b1 * (g - m)
    v *= k.b2
    v += k.one_minus_b2 * (g * g)
    return (m / k.bc1) / (xp.sqrt(v / k.bc2) + k.eps) + k.wd * p


def unfused(xp, p, g, s, k, f):
    p -= k.trust_lr * _update(xp, p, g, s["m"], s["v"], k, f)


def unfused_norms(xp, p, g, s, k, f):
    u = _update(xp, p, g, s["m"], s["v"], k, f)
    return p * p, u * u


def trust(xp, sums, sizes, k):
    """trust_lr = lr * ||theta|| / ||u||, or lr where either norm is 0 (or not finite
    for ||u||, as Keras' comparisons give)."""
    w, u = xp.sqrt(sums["p_sq"]), xp.sqrt(sums["u_sq"])
    ok = (w > 0) & (u > 0)
    ratio = xp.where(ok, w / xp.where(ok, u, 1.0), 1.0)
    return {"trust_lr": k.lr * ratio}


DOC = r"""LAMB (You et al., 2020, https://arxiv.org/abs/1904.00962), fused: Adam's update,
scaled per tensor by the trust ratio ``||theta|| / ||u||``.

Keras convention (default), as ``keras.optimizers.Lamb``, ``t`` the 1-based step::

    m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
    u = (m / (1 - beta_1**t)) / (sqrt(v / (1 - beta_2**t)) + epsilon)
    ratio = ||theta|| / ||u|| if both are > 0 else 1
    theta -= ratio * learning_rate * u

with ``weight_decay`` applied first as Keras does for every optimizer
(``theta -= theta * weight_decay * learning_rate``). ``convention="torch"`` adds
``weight_decay * theta`` to ``u`` instead, before the ratio, as the paper does. Each step
reads the params, grads and moments once to take the norms, then steps them in one pass.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    beta_1, beta_2: moment decays, in [0, 1). 0.9, 0.999.
    epsilon: added to the root, >= 0. 1e-7.
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.array([3.0, 4.0], np.float32)          # ||w|| = 5
    >>> opt = fusedopt.Lamb(learning_rate=0.1)
    >>> opt.apply_gradients([(np.array([1.0, -1.0], np.float32), w)])
    1
    >>> w    # u = g / |g| = (1, -1), ||u|| = sqrt(2): w -= 0.1 * 5 / sqrt(2) * u
    array([2.6464467, 4.3535533], dtype=float32)
"""

LAMB = declare(
    name="lamb", class_name="Lamb", rule=rule, unfused=unfused, doc=DOC,
    hypers=(*ADAM_LIKE, WEIGHT_DECAY),
    keras_signature=("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
    flag_names=("flavor",),
    flags=lambda hp, conv: (KERAS if conv == "keras" else TORCH_DECOUPLED,),
    all_flags=((KERAS,), (TORCH_DECOUPLED,)),
    slots=(Slot("m"), Slot("v")), scalar_names=SCALARS, scalar_fn=scalars,
    reductions=Reductions(names=("p_sq", "u_sq"), rule=norms, unfused=unfused_norms,
                          scalar_names=("trust_lr",), scalars=trust),
    # No torch.optim.Lamb: torch's names for Keras' arguments, the defaults of the common
    # torch LAMBs (Apex's FusedLAMB, timm's Lamb: eps 1e-6, weight_decay 0.01), and the
    # paper's weight decay, inside the update.
    torch=dict(name="Lamb",
               positional=(("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-6),
                           ("weight_decay", 0.01)),
               keyword=(("maximize", False),),
               state=(("m", "exp_avg"), ("v", "exp_avg_sq")), peer="",
               rule="m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2\n"
               "u = m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + weight_decay * p\n"
               "p -= lr * ||p|| / ||u|| * u   (ratio 1 where a norm is 0; You et al., 2020)"),
    keras={"name": "Lamb", "state_attributes": {"m": "_momentums", "v": "_velocities"}})

SPECS = (LAMB,)
__test__ = {"Lamb": DOC}
