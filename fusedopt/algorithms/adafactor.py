"""Adafactor, a second moment factored into row and column averages (Shazeer & Stern, 2018,
https://arxiv.org/abs/1804.04235), as ``torch.optim.Adafactor`` (torch 2.13) and
``keras.optimizers.Adafactor`` (Keras 3.15) have it: they differ, and each convention
follows its own.

For a param of rank >= 2 seen as slices (B, R, C) the state is a row factor r (R per slice)
and a column factor c (C per slice); a param of rank < 2 keeps its whole second moment v.
With t the 1-based step and w = t^beta_2_decay::

    torch:  rho = min(lr, 1/sqrt(t));  alpha = max(eps2, RMS(theta)) * rho
            theta *= 1 - lr * wd
            r = lerp(r, mean_c(g^2), w);  c = lerp(c, mean_r(g^2), w)
            v_hat = r c / max(mean_r(r), eps1)       (rank < 2: v = lerp(v, g^2, w))
            u = g / sqrt(max(v_hat, eps1^2))
            theta -= alpha / max(1, RMS(u) / d) * u
    Keras:  theta -= theta * wd * lr  (Keras' decay, first; the RMS below sees it)
            beta = 1 - t^beta_2_decay (float32);  s = g^2 + eps1
            r = beta r + (1 - beta) mean_c(s);  c likewise;  v_hat = (r / mean_r(r)) c
            (rank < 2: v = beta v + (1 - beta) s);  u = g / sqrt(v_hat)
            theta -= alpha / max(1, RMS(u) / clip_threshold) * u

A step of a factored param is three passes (fusedopt/engine/reductions.py): the factor pass
reads g and sums s along rows and columns (r and c, R + C values per slice, are then moved:
on the host by the CPU backend, by the summing thread on CUDA, kernels/factored.cuh); the
reduction pass reads theta and g and sums theta^2 and u^2
(u from the new factors); the element pass reads theta and g and writes theta. In float32:
4 + 8 + 12 = 24 bytes per element, the fewest any Adafactor step can move: every u needs
the factors, which need every g, so g is read before any u exists; RMS(u) needs every u
before the first theta is written, and storing u (4 + 4) costs more than reading g again
(4); theta's RMS needs theta whole before its first write, so theta is read twice and
written once (12). A param of rank < 2 moves 12 + 20 = 32 (theta, g and v read for the
sums, then theta, g, v read and theta, v written): the new v of every element is needed
before the first theta is written, as StableAdamW's is.
"""

from __future__ import annotations

import math

import numpy as np

from ..constants import KERAS, TORCH_DECOUPLED
from .hyper import AtLeast
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    DECAY_SCALARS,
    LEARNING_RATE,
    WEIGHT_DECAY,
    Factored,
    Hyper,
    Reductions,
    Slot,
    boolean,
    decay_scalars,
    declare,
    optional,
)

SCALARS = (*DECAY_SCALARS, "w", "one_minus_w", "half", "one", "eps1", "eps1_sq", "rho",
           "eps2", "clip")

#: torch's eps[0] None: the machine epsilon of float32 (torch takes the params' dtype's:
#: float64 params need eps=(2.220446049250313e-16, ...) to match it).
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def non_positive(value):
    """beta_2_decay: a finite number <= 0 (t^beta_2_decay is then a weight in (0, 1])."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value <= 0
    return None if ok else "must be a finite number <= 0"


def positive(value):
    """clip_threshold: a finite number > 0 (RMS(u) is divided by it)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0
    return None if ok else "must be a finite number > 0"


def _f32(x) -> float:
    return float(np.float32(x))


def scalars(hp, step, convention):
    decay, lr = float(hp["beta_2_decay"]), float(hp["learning_rate"])
    eps1 = hp["epsilon_1"]
    eps1 = FLOAT32_EPS if eps1 is None else float(eps1)
    if convention == "keras":  # Keras computes them in the variable's dtype (float32)
        t = np.float32(step)
        beta = np.float32(1) - t ** np.float32(decay)
        w, keep = _f32(np.float32(1) - beta), _f32(beta)
        rho = _f32(min(np.float32(lr), np.float32(1) / np.sqrt(t)))
    else:
        w, rho = float(step) ** decay, min(lr, 1 / float(step) ** 0.5)
        keep = 1.0 - w
    return {**decay_scalars(hp), "w": w, "one_minus_w": keep, "half": 0.5, "one": 1.0,
            "eps1": eps1, "eps1_sq": eps1 * eps1, "rho": rho,
            "eps2": float(hp["epsilon_2"]), "clip": float(hp["clip_threshold"])}


# --- the factored moment (rule language: scalars, and whole arrays in the unfused path) ---

def square(g, k, f):
    if f.flavor == KERAS:
        sq = g * g + k.eps1
    else:
        sq = g * g
    return sq


def moment(old, fresh, k, f):
    if f.flavor == KERAS:
        # beta old + (1 - beta) fresh: Keras' float32 beta and 1 - beta
        m = k.one_minus_w * old + k.w * fresh
    else:
        # torch's lerp: its two forms, split at weight 0.5
        m = old + k.w * (fresh - old) if k.w < k.half else fresh - (fresh - old) * k.one_minus_w
    return m


def estimate(r, c, m, k, f):
    if f.flavor == KERAS:
        e = (r / m) * c
    else:
        e = (r * c) / m
    return e


def denominator(xp, row_mean, k, f):
    """m of each slice from the mean of its new row factors (float64)."""
    if f.flavor == KERAS:
        return row_mean
    return xp.maximum(row_mean, k.eps1)


# --- the element rule, the reduction and their array forms ---------------------------------

def rule(p, g, r, c, v, k, f):
    # v: the element's second-moment estimate after this step (fusedopt/algorithms/spec.py)
    if f.flavor == KERAS:
        p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
        p = p - k.alpha * (g / sqrt(v) / k.clip_ratio)  # Keras' order of operations
    else:
        u = g * (k.one / sqrt(v if v > k.eps1_sq else k.eps1_sq))
        p = p * k.wd_factor
        p = p - k.step_lr * u
    return p, r, c, v


def sums(p, g, r, c, v, k, f):
    """The terms of ||theta||^2 (theta as the RMS sees it) and ||u||^2."""
    if f.flavor == KERAS:
        p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
        u = g / sqrt(v)
    else:
        u = g * (k.one / sqrt(v if v > k.eps1_sq else k.eps1_sq))
    return p * p, u * u


def _u(xp, g, v, k, f):
    if f.flavor == KERAS:
        return g / xp.sqrt(v)
    return g * (k.one / xp.sqrt(xp.maximum(v, k.eps1_sq)))


def unfused(xp, p, g, s, k, f):
    if f.flavor == KERAS:
        g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
        p -= k.alpha * (_u(xp, g, s["v"], k, f) / k.clip_ratio)
    else:
        u = _u(xp, g, s["v"], k, f)
        p *= k.wd_factor
        p -= k.step_lr * u


def unfused_sums(xp, p, g, s, k, f):
    if f.flavor == KERAS:
        g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    return p * p, _u(xp, g, s["v"], k, f) ** 2


def step_sizes(xp, sums, sizes, k):
    """Per tensor: alpha = max(eps2, RMS(theta)) * rho, clip_ratio = max(1, RMS(u) / clip)
    and step_lr = alpha / clip_ratio (torch folds them; Keras divides u, then multiplies)."""
    n = xp.maximum(sizes, 1.0)
    rms_p, rms_u = xp.sqrt(sums["p_sq"] / n), xp.sqrt(sums["u_sq"] / n)
    alpha = xp.maximum(k.eps2, rms_p) * k.rho
    ratio = xp.maximum(1.0, rms_u / k.clip)
    return {"step_lr": alpha / ratio, "alpha": alpha, "clip_ratio": ratio}


DOC = r"""Adafactor (Shazeer & Stern, 2018, https://arxiv.org/abs/1804.04235), fused: the
second moment of a param of rank >= 2 kept as row and column averages of the last two
dimensions, the update scaled by the param's RMS and clipped by its own RMS.

Keras convention (default), as ``keras.optimizers.Adafactor``, ``t`` the 1-based step::

    rho = min(learning_rate, 1 / sqrt(t));  alpha = max(epsilon_2, RMS(theta)) * rho
    beta = 1 - t**beta_2_decay;  s = g**2 + epsilon_1
    r = beta * r + (1 - beta) * mean(s, axis=-1);  c = beta * c + (1 - beta) * mean(s, axis=-2)
    v = (r / mean(r)) (outer) c          (rank < 2: v = beta * v + (1 - beta) * s)
    u = g / sqrt(v);  theta -= alpha / max(1, RMS(u) / clip_threshold) * u

with ``weight_decay`` applied first as Keras does (``theta -= theta * weight_decay *
learning_rate``). ``convention="torch"`` is ``torch.optim.Adafactor``'s: epsilon_1 clamps
the estimate (``max(v, epsilon_1**2)``) and the row mean (``max(mean(r), epsilon_1)``)
instead of being added to g**2, and weight decay ``theta *= 1 - learning_rate *
weight_decay`` comes after the RMS of theta. ``relative_step`` is Keras' and changes
nothing here (Keras takes ``min(learning_rate, 1/sqrt(t))`` either way).

Each step reads the grads three times and the params twice (24 bytes per float32 element
of a factored param): the row and column sums, then the RMS of theta and u, then the update.

Args:
    learning_rate: the largest relative step, or a schedule. 0.001.
    beta_2_decay: w = t**beta_2_decay is the weight of the new squares, <= 0. -0.8.
    epsilon_1: 1e-30 (None, torch's default: float32's machine epsilon), >= 0.
    epsilon_2: the smallest RMS(theta) the step scales by, >= 0. 1e-3.
    clip_threshold: the RMS(u) above which u is scaled down, > 0. 1.0.
    relative_step: True (Keras' argument; see above).
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones((2, 2), np.float32)
    >>> opt = fusedopt.Adafactor(learning_rate=0.1)
    >>> opt.apply_gradients([(np.full((2, 2), 3.0, np.float32), w)])
    1
    >>> w    # v = g**2, u = 1, RMS(theta) = 1: theta -= 0.1 * 1
    array([[0.9, 0.9],
           [0.9, 0.9]], dtype=float32)
"""

ADAFACTOR = declare(
    name="adafactor", class_name="Adafactor", rule=rule, unfused=unfused, doc=DOC,
    hypers=(LEARNING_RATE, Hyper("beta_2_decay", -0.8, non_positive),
            Hyper("epsilon_1", 1e-30, optional(AtLeast(0.0))),
            Hyper("epsilon_2", 1e-3, AtLeast(0.0)),
            Hyper("clip_threshold", 1.0, positive),
            Hyper("relative_step", True, boolean, conventions=frozenset({"keras"})),
            WEIGHT_DECAY),
    keras_signature=("learning_rate", "beta_2_decay", "epsilon_1", "epsilon_2",
                     "clip_threshold", "relative_step", "weight_decay"),
    flag_names=("flavor",),
    flags=lambda hp, conv: (KERAS if conv == "keras" else TORCH_DECOUPLED,),
    all_flags=((KERAS,), (TORCH_DECOUPLED,)),
    dtypes=("float32", "float64"),
    slots=(Slot("r", shape="row"), Slot("c", shape="col"), Slot("v", shape="full")),
    scalar_names=SCALARS, scalar_fn=scalars,
    reductions=Reductions(names=("p_sq", "u_sq"), rule=sums, unfused=unfused_sums,
                          scalar_names=("step_lr", "alpha", "clip_ratio"),
                          scalars=step_sizes),
    factored=Factored(row="r", col="c", full="v", square=square, moment=moment,
                      estimate=estimate, denominator=denominator),
    torch=dict(name="Adafactor",
               positional=(("lr", 1e-2), ("beta2_decay", -0.8), ("eps", (None, 1e-3)),
                           ("d", 1.0), ("weight_decay", 0.0)),
               keyword=(("foreach", None), ("maximize", False)),
               renames=(("beta2_decay", "beta_2_decay"), ("d", "clip_threshold")),
               tuples=(("eps", ("epsilon_1", "epsilon_2")),),
               state=(("r", "row_var"), ("c", "col_var"), ("v", "variance")),
               peer="torch.optim:Adafactor",
               rule="rho = min(lr, 1/sqrt(t));  alpha = max(eps2, RMS(p)) * rho;  "
               "p *= 1 - lr * weight_decay\n"
               "row_var = lerp(row_var, mean(g^2, -1), t^beta2_decay);  col_var likewise "
               "(dim -2)\n"
               "v = row_var @ col_var / max(mean(row_var, -2), eps1)   (1-D: variance = "
               "lerp(variance, g^2, t^beta2_decay))\n"
               "u = g / sqrt(max(v, eps1^2));  p -= alpha / max(1, RMS(u) / d) * u"),
    keras={"name": "Adafactor", "state_attributes": {"r": "_r", "c": "_c", "v": "_v"}})

SPECS = (ADAFACTOR,)
__test__ = {"Adafactor": DOC}
