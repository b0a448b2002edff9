"""Nadam, Adam with Nesterov momentum (Dozat, 2016), in Keras' and torch's forms.

The momentum schedule ``mu_t = b1 (1 - 0.5 * 0.96^(t psi))`` (psi = 1 in Keras,
``momentum_decay`` in torch) and its running product ``P_t = mu_1 ... mu_t`` are functions of
the step, computed on the host::

    m += (g - m)(1 - b1);  v as Adam's
    c_m = mu_(t+1) / (1 - P_t mu_(t+1)),  c_g = (1 - mu_t) / (1 - P_t)
    Keras:  theta -= (c_m m + c_g g) lr / (sqrt(v / (1 - b2^t)) + eps)
    torch:  d = sqrt(v / (1 - b2^t)) + eps;  theta -= lr c_g g / d;  theta -= lr c_m m / d
"""

from __future__ import annotations

import threading
from array import array

import numpy as np

from ..constants import KERAS, TORCH_DECOUPLED, TORCH_L2
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    ADAM_LIKE,
    DECAY_SCALARS,
    DECOUPLED,
    TORCH_ONLY,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    StateScalar,
    at_least,
    decay_scalars,
    declare,
    flavor,
)

SCALARS = (*DECAY_SCALARS, "b2", "one_minus_b1", "one_minus_b2", "eps", "bc2", "c_m", "c_g")

_F32 = np.float32

#: Keras' Nadam momentum schedule decays as 0.96**t; torch's as 0.96**(t * momentum_decay).
NADAM_DECAY_BASE = 0.96

_MOMENTUM_PRODUCTS: dict[tuple[float, float, bool], array] = {}
#: Held while a memo grows: two threads extending one memo at once would each append the
#: product of the same step, and every later product would be off by one factor.
_MOMENTUM_PRODUCTS_LOCK = threading.Lock()


def nadam_momentum(b1: float, psi: float, t: int) -> float:
    """mu_t = b1 (1 - 0.5 * 0.96**(t psi)), Nadam's momentum at 1-based step t."""
    return b1 * (1.0 - 0.5 * NADAM_DECAY_BASE ** (t * psi))


def nadam_momentum_product(b1: float, psi: float, t: int, float32: bool = False) -> float:
    """P_t = mu_1 mu_2 ... mu_t (P_0 = 1), the product Keras keeps as ``u_product`` and torch
    as ``mu_product``: a pure function of the step, so it needs no state of its own and a
    restored optimizer continues exactly.

    ``float32``: each product rounded to float32, as torch.optim.NAdam's ``mu_product *= mu``
    on its float32 ``mu_product`` tensor rounds it (its scalars then use that value), so the
    torch convention matches torch's bias corrections to the bit. Memoised per (b1, psi,
    float32), formed left to right as the libraries do, until mu_t reaches b1 in double (or P
    underflows); from there on P_t = P_K * b1**(t - K).
    """
    key = (b1, psi, float32)
    products = _MOMENTUM_PRODUCTS.get(key)
    if products is not None and t < len(products):  # the usual step: no lock
        return products[t]
    with _MOMENTUM_PRODUCTS_LOCK:
        products = _MOMENTUM_PRODUCTS.setdefault(key, array("d", [1.0]))
        while len(products) <= t:
            k = len(products)
            mu = nadam_momentum(b1, psi, k)
            if products[-1] == 0.0:
                return 0.0
            if float32:
                products.append(float(_F32(products[-1]) * _F32(mu)))
                continue
            if mu == b1 and k > 1:
                return products[-1] * b1 ** (t - (k - 1))
            products.append(products[-1] * mu)
        return products[t]


def _torch_mu_product(hp, steps):
    """torch.optim.NAdam's ``mu_product`` after ``steps`` steps (its float32 running product)."""
    return nadam_momentum_product(float(hp["beta_1"]), float(hp["momentum_decay"]), steps,
                                  float32=True)


def scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    psi = 1.0 if convention == "keras" else float(hp["momentum_decay"])
    mu, mu_next = nadam_momentum(b1, psi, step), nadam_momentum(b1, psi, step + 1)
    product = nadam_momentum_product(b1, psi, step, float32=convention == "torch")
    product_next = product * mu_next
    c_m, c_g = mu_next / (1.0 - product_next), (1.0 - mu) / (1.0 - product)
    if convention != "keras":
        lr = float(hp["learning_rate"])
        c_m, c_g = lr * c_m, lr * c_g
    return {**decay_scalars(hp), "b2": b2, "one_minus_b1": 1.0 - b1, "one_minus_b2": 1.0 - b2,
            "eps": float(hp["epsilon"]), "bc2": 1.0 - b2**step, "c_m": c_m, "c_g": c_g}


def rule(p, g, m, v, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m = m + (g - m) * k.one_minus_b1
    if f.flavor == KERAS:
        v = v + (g * g - v) * k.one_minus_b2
        p = p - (k.c_m * m + k.c_g * g) * k.lr / (sqrt(v / k.bc2) + k.eps)
    else:
        v = k.b2 * v + k.one_minus_b2 * (g * g)
        d = sqrt(v / k.bc2) + k.eps
        p = p - k.c_g * (g / d)
        p = p - k.c_m * (m / d)
    return p, m, v


def unfused(xp, p, g, s, k, f):
    m, v = s["m"], s["v"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    m += (g - m) * k.one_minus_b1
    if f.flavor == KERAS:
        v += (g * g - v) * k.one_minus_b2
        p -= (k.c_m * m + k.c_g * g) * k.lr / (xp.sqrt(v / k.bc2) + k.eps)
    else:
        v *= k.b2
        v += k.one_minus_b2 * (g * g)
        d = xp.sqrt(v / k.bc2) + k.eps
        p -= k.c_g * (g / d)
        p -= k.c_m * (m / d)


DOC = r"""Nadam, Adam with Nesterov momentum (Dozat, 2016), fused.

Keras convention (default), with ``t`` the 1-based step, a momentum schedule
``mu_t = beta_1 * (1 - 0.5 * 0.96**t)`` and its running product
``P_t = mu_1 * ... * mu_t`` (Keras' ``u_product``)::

    m += (g - m) * (1 - beta_1)
    v += (g**2 - v) * (1 - beta_2)
    m_hat = mu_{t+1} * m / (1 - P_{t+1}) + (1 - mu_t) * g / (1 - P_t)
    theta -= lr * m_hat / (sqrt(v / (1 - beta_2**t)) + epsilon)

``convention="torch"`` reproduces ``torch.optim.NAdam``: the same update with
``mu_t = beta_1 * (1 - 0.5 * 0.96**(t * momentum_decay))``, applied as two steps
``theta -= lr (1 - mu_t) / (1 - P_t) * g / d`` and
``theta -= lr mu_{t+1} / (1 - P_{t+1}) * m / d`` with ``d = sqrt(v_hat) + epsilon``;
``weight_decay`` is L2 there (``g += wd * theta``), or ``theta *= 1 - lr * wd`` with
``decoupled_weight_decay=True``. In Keras it is ``theta -= theta * wd * lr``.

``P_t`` is computed from ``t`` alone each step (not carried as state), so a state
dict holds nothing but m and v per param and restores exactly.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001
        (torch's own default is 0.002).
    beta_1: momentum, in [0, 1). 0.9.
    beta_2: decay of the second moment, in [0, 1). 0.999.
    epsilon: >= 0. 1e-7 (torch's own default is 1e-8).
    weight_decay: None or >= 0. None.
    momentum_decay: torch convention only, psi above, >= 0. 0.004.
    decoupled_weight_decay: torch convention only. False.
    clipnorm, clipvalue, global_clipnorm: Keras' gradient clipping (at most one).

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.zeros(3, np.float32)
    >>> opt = fusedopt.Nadam(learning_rate=0.1)
    >>> opt.apply_gradients([(np.array([1, -1, 0], np.float32), w)])
    1
    >>> np.round(w, 4)
    array([-0.1063,  0.1063,  0.    ], dtype=float32)
"""

NADAM = declare(
    name="nadam", class_name="Nadam", rule=rule, unfused=unfused, doc=DOC,
    hypers=(*ADAM_LIKE, WEIGHT_DECAY,
            Hyper("momentum_decay", 4e-3, at_least(0.0), conventions=TORCH_ONLY), DECOUPLED),
    keras_signature=("learning_rate", "beta_1", "beta_2", "epsilon", "weight_decay"),
    flag_names=("flavor",),
    flags=lambda hp, conv: (flavor(conv, bool(hp["decoupled_weight_decay"])),),
    all_flags=((KERAS,), (TORCH_L2,), (TORCH_DECOUPLED,)),
    slots=(Slot("m"), Slot("v", nonneg=True)), scalar_names=SCALARS, scalar_fn=scalars,
    torch=dict(name="NAdam",
               positional=(("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8),
                           ("weight_decay", 0), ("momentum_decay", 4e-3),
                           ("decoupled_weight_decay", False)),
               keyword=(("foreach", None), ("maximize", False), ("capturable", False),
                        ("differentiable", False)),
               state=(("m", "exp_avg"), ("v", "exp_avg_sq")),
               derived=(StateScalar("mu_product", _torch_mu_product,
                                    "the product of NAdam's momenta"),),
               peer="torch.optim:NAdam",
               rule="mu_t = b1 (1 - 0.5 * 0.96^(t momentum_decay));  P_t = mu_1 ... mu_t "
               "(mu_product)\nm, v as Adam;  d = sqrt(v / (1 - b2^t)) + eps\n"
               "p -= lr (1 - mu_t) / (1 - P_t) * g / d + lr mu_(t+1) / (1 - P_t mu_(t+1)) * m"
               " / d\nweight_decay: g += weight_decay * p first (L2). "
               "decoupled_weight_decay=True: p *= 1 - lr * weight_decay instead."),
    keras={"name": "Nadam", "state_attributes": {"m": "_momentums", "v": "_velocities"}})

SPECS = (NADAM,)
__test__ = {"Nadam": DOC}
