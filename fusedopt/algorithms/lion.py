"""Lion, evolved sign momentum (Chen et al., 2023).

    c = b1 m + (1 - b1) g;  theta -= lr sign(c);  m = b2 m + (1 - b2) g

torch has no Lion: the torch convention keeps the rule and decays the weights the paper's
(and torch AdamW's) way, theta *= 1 - lr wd (flavor TORCH_DECOUPLED).
"""

from __future__ import annotations

from ..constants import KERAS, TORCH_DECOUPLED
from .rulelib import decay_in_place, weight_decay
from .spec import (
    DECAY_SCALARS,
    LEARNING_RATE,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    decay_scalars,
    declare,
    flavor,
    in_range,
)

SCALARS = (*DECAY_SCALARS, "b1", "b2", "one_minus_b1", "one_minus_b2")


def scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    return {**decay_scalars(hp), "b1": b1, "b2": b2, "one_minus_b1": 1.0 - b1,
            "one_minus_b2": 1.0 - b2}


def rule(p, g, m, k, f):
    p, g = weight_decay(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    c = m * k.b1 + g * k.one_minus_b1
    # lr * sign(c) as a select: +-lr exactly, c * lr = +-0 for c = 0 and NaN for NaN.
    step = k.lr if c > 0 else (-k.lr if c < 0 else c * k.lr)
    p = p - step
    m = m * k.b2 + g * k.one_minus_b2
    return p, m


def unfused(xp, p, g, s, k, f):
    m = s["m"]
    g = decay_in_place(f.flavor, p, g, k.lr, k.wd, k.wd_factor)
    p -= k.lr * xp.sign(m * k.b1 + g * k.one_minus_b1)
    m *= k.b2
    m += g * k.one_minus_b2


def _beta_1(value):
    # Keras: at 0 Lion degenerates to signSGD, so beta_1 must be in (0, 1].
    ok = in_range(0.0, 1.0, closed_high=True)(value) is None and value > 0
    return None if ok else "must be in (0, 1] (at 0 Lion is sign SGD)"


DOC = r"""Lion, evolved sign momentum (Chen et al., 2023, https://arxiv.org/abs/2302.06675), fused.

Keras convention (default)::

    c = beta_1 * m + (1 - beta_1) * g
    theta -= lr * sign(c)                 # sign(0) = 0
    m = beta_2 * m + (1 - beta_2) * g

with ``weight_decay`` applied first as ``theta -= theta * wd * lr``.

PyTorch has no Lion, so ``convention="torch"`` runs the same rule (what a user
porting a torch Lion implementation expects) with the decoupled weight decay of the
paper and of torch's AdamW, ``theta *= 1 - lr * wd``: equal to Keras' up to rounding.

Every step moves each weight by exactly ``lr`` (plus decay), so Lion wants a learning
rate 3-10x smaller than Adam's.

Args:
    learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
    beta_1: interpolation of the update direction, in (0, 1]. 0.9.
    beta_2: decay of the momentum, in [0, 1]. 0.99.
    weight_decay: None or >= 0. None.
    clipnorm, clipvalue, global_clipnorm: Keras' gradient clipping (at most one).

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.zeros(3, np.float32)
    >>> opt = fusedopt.Lion(learning_rate=0.25)
    >>> opt.apply_gradients([(np.array([3, -0.5, 0], np.float32), w)])
    1
    >>> w
    array([-0.25,  0.25,  0.  ], dtype=float32)
"""

LION = declare(
    name="lion", class_name="Lion", rule=rule, unfused=unfused, doc=DOC,
    hypers=(LEARNING_RATE, Hyper("beta_1", 0.9, _beta_1),
            Hyper("beta_2", 0.99, in_range(0.0, 1.0, closed_high=True)), WEIGHT_DECAY),
    keras_signature=("learning_rate", "beta_1", "beta_2", "weight_decay"),
    flag_names=("flavor",),
    flags=lambda hp, conv: (flavor(conv, decoupled_in_torch=True),),
    all_flags=((KERAS,), (TORCH_DECOUPLED,)),
    slots=(Slot("m"),), scalar_names=SCALARS, scalar_fn=scalars,
    # No torch.optim.Lion: the arguments of the common torch Lion (lion-pytorch), whose
    # decay is decoupled, theta *= 1 - lr * wd, as the torch convention does.
    torch=dict(name="Lion",
               positional=(("lr", 1e-4), ("betas", (0.9, 0.99)), ("weight_decay", 0.0)),
               keyword=(("maximize", False),),
               state=(("m", "exp_avg"),), counts_steps=False, peer="lion_pytorch:Lion",
               rule="p *= 1 - lr * weight_decay;  p -= lr * sign(b1 m + (1 - b1) g)\n"
               "m = b2 m + (1 - b2) g   (Chen et al., 2023)"),
    keras={"name": "Lion", "state_attributes": {"m": "_momentums"}})

SPECS = (LION,)
__test__ = {"Lion": DOC}
