"""Adam, AdamW and AMSGrad (Kingma & Ba, 2015; Loshchilov & Hutter, 2019; Reddi et al., 2018).

Keras (flavor KERAS)::

    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
    theta -= m * step_size / (sqrt(v) + eps),    step_size = lr sqrt(1 - b2^t) / (1 - b1^t)

torch (flavor TORCH_L2 or TORCH_DECOUPLED)::

    m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
    theta -= step_size * (m / (sqrt(v) / sqrt(1 - b2^t) + eps)),   step_size = lr / (1 - b1^t)

With amsgrad, vhat = max(vhat, v) is kept and divides instead of v. Step sizes and bias
corrections are computed once per step on the host, in float64.
"""

from __future__ import annotations

import math

from ..constants import KERAS, TORCH_DECOUPLED, TORCH_L2
from .rulelib import decay_in_place, sqrt, weight_decay
from .spec import (
    ADAM_LIKE,
    DECAY_SCALARS,
    DECOUPLED,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    at_least,
    boolean,
    decay_scalars,
    declare,
    flavor,
)

SCALARS = (*DECAY_SCALARS, "b1", "b2", "one_minus_b1", "one_minus_b2", "eps", "step_size",
           "bc2_sqrt")


def scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    bc1, bc2 = 1.0 - b1**step, 1.0 - b2**step
    lr = float(hp["learning_rate"])
    step_size = lr * math.sqrt(bc2) / bc1 if convention == "keras" else lr / bc1
    return {**decay_scalars(hp), "b1": b1, "b2": b2, "one_minus_b1": 1.0 - b1,
            "one_minus_b2": 1.0 - b2, "eps": float(hp["epsilon"]), "step_size": step_size,
            "bc2_sqrt": math.sqrt(bc2)}


def rule(p, g, m, v, vhat, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    if f.flavor == KERAS:
        m = m + (g - m) * k.one_minus_b1
        v = v + (g * g - v) * k.one_minus_b2
    else:
        m = m + k.one_minus_b1 * (g - m)
        v = k.b2 * v + k.one_minus_b2 * (g * g)
    v_used = v
    if f.amsgrad:
        vhat = vhat if vhat > v else v
        v_used = vhat
    if f.flavor == KERAS:
        p = p - m * k.step_size / (sqrt(v_used) + k.eps)
    else:
        p = p - k.step_size * (m / (sqrt(v_used) / k.bc2_sqrt + k.eps))
    return p, m, v, vhat


def unfused(xp, p, g, s, k, f):
    m, v = s["m"], s["v"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    if f.flavor == KERAS:
        m += (g - m) * k.one_minus_b1
        v += (g * g - v) * k.one_minus_b2
    else:
        m += k.one_minus_b1 * (g - m)
        v *= k.b2
        v += k.one_minus_b2 * (g * g)
    if f.amsgrad:
        xp.maximum(s["vhat"], v, out=s["vhat"])
        v = s["vhat"]
    if f.flavor == KERAS:
        p -= m * k.step_size / (xp.sqrt(v) + k.eps)
    else:
        p -= k.step_size * (m / (xp.sqrt(v) / k.bc2_sqrt + k.eps))


ADAM_DOC = r"""Adam (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980), fused.

Keras convention (default), with ``t`` the 1-based step::

    alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m += (g - m) * (1 - beta_1)
    v += (g**2 - v) * (1 - beta_2)
    theta -= m * alpha / (sqrt(v) + epsilon)          # v -> max(vhat, v) with amsgrad

``convention="torch"`` uses ``torch.optim.Adam``'s formulas: epsilon is added to
``sqrt(v) / sqrt(1 - beta_2**t)`` and ``weight_decay`` is L2 (``g += wd * theta``);
in the Keras convention weight decay is decoupled (``theta -= theta * wd * lr``).

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    beta_1: decay of the first moment, in [0, 1). 0.9.
    beta_2: decay of the second moment, in [0, 1). 0.999.
    epsilon: added to the denominator, >= 0. 1e-7 (torch's own default is 1e-8).
    amsgrad: keep the running maximum of v (Reddi et al., 2018). False.
    weight_decay: None or >= 0. None.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(4, np.float32)
    >>> opt = fusedopt.Adam(learning_rate=0.5)
    >>> opt.apply_gradients([(np.array([1, 6, 7, 2], np.float32), w)])
    1
    >>> w.round(4)
    array([0.5, 0.5, 0.5, 0.5], dtype=float32)
"""

ADAMW_DOC = r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), fused.

Keras convention: ``theta -= theta * weight_decay * lr`` before the Adam update.
``convention="torch"``: ``theta *= 1 - lr * weight_decay``, then torch's Adam update,
as ``torch.optim.AdamW``. Arguments as :class:`Adam`; ``weight_decay`` defaults to
0.004 (Keras; torch's default is 0.01) and ``name`` to "adam_w".
"""

_TORCH_STATE = (("m", "exp_avg"), ("v", "exp_avg_sq"), ("vhat", "max_exp_avg_sq"))
_TORCH_RULE = """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  amsgrad: v_max = max(v_max, v)
p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)"""
_KERAS_STATE = {"m": "_momentums", "v": "_velocities", "vhat": "_velocity_hats"}


def _family(name, class_name, keras_name, decoupled_in_torch, weight_decay, extra, doc,
            keras_signature, torch):
    def flags(hp, convention):
        decoupled = decoupled_in_torch or bool(hp.get("decoupled_weight_decay"))
        return (flavor(convention, decoupled), int(hp["amsgrad"]))

    return declare(
        name=name, class_name=class_name, keras_name=keras_name, rule=rule, unfused=unfused,
        hypers=(*ADAM_LIKE, Hyper("amsgrad", False, boolean), weight_decay, *extra),
        flag_names=("flavor", "amsgrad"), flags=flags,
        all_flags=tuple((fl, a) for fl in (KERAS, TORCH_L2, TORCH_DECOUPLED) for a in (0, 1)),
        slots=(Slot("m"), Slot("v", nonneg=True),
               Slot("vhat", when="amsgrad", nonneg=True)),
        scalar_names=SCALARS, scalar_fn=scalars, doc=doc, keras_signature=keras_signature,
        torch=torch, keras={"name": class_name, "state_attributes": _KERAS_STATE})


ADAM = _family(
    "adam", "Adam", "adam", False, WEIGHT_DECAY, (DECOUPLED,), ADAM_DOC,
    ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay"),
    torch=dict(name="Adam",
               positional=(("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8),
                           ("weight_decay", 0), ("amsgrad", False)),
               keyword=(("foreach", None), ("maximize", False), ("capturable", False),
                        ("differentiable", False), ("fused", None),
                        ("decoupled_weight_decay", False)),
               state=_TORCH_STATE, peer="torch.optim:Adam",
               rule=_TORCH_RULE + "\nweight_decay: g += weight_decay * p first (L2). "
               "decoupled_weight_decay=True: p *= 1 - lr * weight_decay instead (AdamW)."))

ADAMW = _family(
    "adamw", "AdamW", "adam_w", True, Hyper("weight_decay", 0.004, at_least(0.0)), (),
    ADAMW_DOC,
    ("learning_rate", "weight_decay", "beta_1", "beta_2", "epsilon", "amsgrad"),
    torch=dict(name="AdamW",
               positional=(("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8),
                           ("weight_decay", 1e-2), ("amsgrad", False)),
               keyword=(("maximize", False), ("foreach", None), ("capturable", False),
                        ("differentiable", False), ("fused", None)),
               state=_TORCH_STATE, fixed=(("decoupled_weight_decay", True),),
               peer="torch.optim:AdamW",
               rule="p *= 1 - lr * weight_decay, then Adam:\n" + _TORCH_RULE))

SPECS = (ADAM, ADAMW)
__test__ = {"Adam": ADAM_DOC}
