"""Schedule-free AdamW and SGD (Defazio et al., 2024, https://arxiv.org/abs/2405.15682), as
the schedulefree package (``AdamWScheduleFree``, ``SGDScheduleFree``) and Keras'
``ScheduleFreeAdamW`` have them, and the pass that moves their params between the two points.

Three sequences: z (the slot, where the gradient steps land), x (the weighted average of the
z's, what one evaluates) and y = (1 - b1) z + b1 x, where the gradient is taken. In train
mode the param holds y; x is never stored. With c the step's averaging weight::

    AdamW:  v = b2 v + (1 - b2) g^2;  gn = g / (sqrt(v / (1 - b2^t)) + eps)   (SGD: gn = g)
    torch:  gn += wd y  (decay at y)
    y = lerp(y, z, c) + lr (b1 (1 - c) - 1) gn;   z -= lr gn

lr is warmed up linearly over ``warmup_steps``. The weight c: torch convention (the
schedulefree package) ``c = w_t / sum(w)``, ``w_t = t^r lr_max^weight_lr_power`` with
``lr_max`` the largest lr so far: ``lr_max`` and the running sum are optimizer-level scalars
(``running``), advanced after every applied step and checkpointed with the optimizer. Keras
convention (Keras' ScheduleFreeAdamW): c = 1/t, and Keras' decoupled decay ``y -= y wd lr``
(the learning rate before warm-up) before the update, computed in Keras' order: z stepped,
x recovered from y and z, averaged with z, y rebuilt. Keras 3.15 means x from the z before
the step ("momentum_old"), but on its torch backend - the one fusedopt.keras runs on -
``momentum.value`` is the variable's own tensor, stepped in place before x is computed, so
Keras recovers x from the new z; this convention reproduces what Keras computes there.

The switch (``schedulefreeswitch``) is a second rule: eval moves the param from y to
x = lerp(y, z, 1 - 1/b1) and keeps y in its slot; train puts the kept y back, bit for bit
(the lerp back, ``lerp(x, z, 1 - b1)``, rounds: it would not give y's bits), or - with no y
kept (a checkpoint of the schedulefree package taken in eval mode) - lerps back as that
package does. It runs through the engine as an optimizer step whose "grad" is z
(fusedopt/engine/modes.py).
"""

from __future__ import annotations

import math

from ..constants import KERAS, TORCH_L2
from .hyper import AtLeast, InRange
from .rulelib import sqrt
from .spec import (
    LEARNING_RATE,
    TORCH_ONLY,
    WEIGHT_DECAY,
    Hyper,
    Slot,
    boolean,
    declare,
    learning_rate,
)

RUNNING = {"lr_max": -1.0, "weight_sum": 0.0}
_POSITIVE_BETA = InRange(0.0, 1.0)
WARMUP = Hyper("warmup_steps", 0, AtLeast(0.0))
#: Powers of the averaging weight t^r lr_max^weight_lr_power: at most 15, so that t^r stays
#: finite in float64 for every step count below 2^64 (the schedulefree package takes any
#: value and fails with an OverflowError at the step where the weight overflows).
R = Hyper("r", 0.0, InRange(0.0, 15.0, closed_high=True), conventions=TORCH_ONLY)
WEIGHT_LR_POWER = Hyper("weight_lr_power", 2.0, InRange(0.0, 15.0, closed_high=True),
                        conventions=TORCH_ONLY)


def _scheduled_lr(hp, step):
    lr, warm = float(hp["learning_rate"]), int(hp["warmup_steps"])
    return lr * step / warm if step <= warm else lr


def _weight(hp, step, lr_max):
    try:
        return float(step) ** float(hp["r"]) * lr_max ** float(hp["weight_lr_power"])
    except OverflowError:  # a huge learning rate: the step's scalars become NaN, refused
        return math.inf


def advance(hp, step, running):
    """The running scalars after applied step ``step`` (torch convention; unused by Keras');
    ``running`` None: those of ``hp`` at every earlier step."""
    if running is None:
        running = _before(hp, step)
    lr_max = max(_scheduled_lr(hp, step), running["lr_max"])
    return {"lr_max": lr_max, "weight_sum": running["weight_sum"] + _weight(hp, step, lr_max)}


def _before(hp, step):
    """The running scalars before ``step`` had every earlier step had ``hp``."""
    running = dict(RUNNING)
    for earlier in range(1, step):
        running = advance(hp, earlier, running)
    return running


def _averaging_weight(hp, step, convention):
    """c of ``step``: 1/t (Keras), else w_t over the running sum (the running scalars in
    ``hp``, or - absent, as for a backend test - those of the same hyperparameters at every
    earlier step)."""
    if convention == "keras":
        return 1.0 / step
    running = ({"lr_max": hp["lr_max"], "weight_sum": hp["weight_sum"]} if "weight_sum" in hp
               else _before(hp, step))
    after = advance(hp, step, running)
    weight = _weight(hp, step, after["lr_max"])
    return weight / after["weight_sum"] if after["weight_sum"] != 0 else 0.0


def _lerp_scalars(c, one_minus_c=None):
    """torch's lerp(a, b, c): a + c (b - a) below one half, else b - (b - a) (1 - c).
    ``one_minus_c``: 1 - c where the caller has it exactly (default: computed)."""
    return {"c": c, "one_minus_c": 1.0 - c if one_minus_c is None else one_minus_c,
            "c_from_end": float(c >= 0.5)}


#: The family's scalars (one struct in CUDA); each optimizer gives 0 for those it lacks.
SCALARS = ("lr", "wd", "step_lr", "b1", "one_minus_b1", "y_coef", "c", "one_minus_c",
           "c_from_end", "b2", "one_minus_b2", "bc2", "eps")
_UNUSED = dict.fromkeys(SCALARS, 0.0)


def _scalars(hp, step, convention, b1):
    c = _averaging_weight(hp, step, convention)
    lr = _scheduled_lr(hp, step)
    return {**_UNUSED, "lr": float(hp["learning_rate"]), "wd": float(hp["weight_decay"] or 0.0),
            "step_lr": lr, "b1": b1, "one_minus_b1": 1.0 - b1,
            "y_coef": lr * (b1 * (1.0 - c) - 1.0), **_lerp_scalars(c)}


def scalars_sgd(hp, step, convention):
    return _scalars(hp, step, convention, float(hp["momentum"]))


def scalars_adamw(hp, step, convention):
    b2 = float(hp["beta_2"])
    return {**_scalars(hp, step, convention, float(hp["beta_1"])), "b2": b2,
            "one_minus_b2": 1.0 - b2, "bc2": 1.0 - b2**step, "eps": float(hp["epsilon"])}


def rule(p, g, z, v, y, k, f):
    # One rule for the family (one CUDA kernel): the step (z, and v when adaptive) or the
    # switch between the points (y kept), chosen by flags at compile time.
    if not f.stepping:  # the switch: g is z
        if f.to_eval:
            y = p
            p = (g - (g - p) * k.one_minus_c) if k.c_from_end > 0 else (p + k.c * (g - p))
        elif f.saved:
            p = y
        else:
            p = (g - (g - p) * k.one_minus_c) if k.c_from_end > 0 else (p + k.c * (g - p))
    elif f.flavor == KERAS and f.adaptive:  # Keras' ScheduleFreeAdamW, in its order
        if k.wd != 0:
            p = p - p * k.wd * k.lr
        v = v + (g * g - v) * k.one_minus_b2
        z = z - k.step_lr * g / (sqrt(v / k.bc2) + k.eps)
        x = (p - k.one_minus_b1 * z) / k.b1  # z updated already: see the module's doc
        x = k.one_minus_c * x + k.c * z
        p = k.one_minus_b1 * z + k.b1 * x
    else:
        if f.flavor == KERAS:
            if k.wd != 0:
                p = p - p * k.wd * k.lr
        if f.adaptive:
            v = k.b2 * v + k.one_minus_b2 * (g * g)
            g = g / (sqrt(v / k.bc2) + k.eps)
        if f.flavor != KERAS and k.wd != 0:  # torch: decay at y, on the normalized grad
            g = g + k.wd * p
        p = (z - (z - p) * k.one_minus_c) if k.c_from_end > 0 else (p + k.c * (z - p))
        p = p + k.y_coef * g
        z = z - k.step_lr * g
    return p, z, v, y


def _lerp_in_place(xp, p, z, k):
    if k.c_from_end > 0:
        p[...] = z - (z - p) * k.one_minus_c
    else:
        p += k.c * (z - p)


def unfused_adamw(xp, p, g, s, k, f):
    z, v = s["z"], s["v"]
    if f.flavor == KERAS:
        if k.wd != 0:
            p -= p * k.wd * k.lr
        v += (g * g - v) * k.one_minus_b2
        z -= k.step_lr * g / (xp.sqrt(v / k.bc2) + k.eps)
        x = (p - k.one_minus_b1 * z) / k.b1
        x = k.one_minus_c * x + k.c * z
        p[...] = k.one_minus_b1 * z + k.b1 * x
        return
    v *= k.b2
    v += k.one_minus_b2 * (g * g)
    gn = g / (xp.sqrt(v / k.bc2) + k.eps)
    if k.wd != 0:
        gn = gn + k.wd * p
    _lerp_in_place(xp, p, z, k)
    p += k.y_coef * gn
    z -= k.step_lr * gn


def unfused_sgd(xp, p, g, s, k, f):
    z = s["z"]
    if f.flavor == KERAS:
        if k.wd != 0:
            p -= p * k.wd * k.lr
    elif k.wd != 0:
        g = g + k.wd * p
    _lerp_in_place(xp, p, z, k)
    p += k.y_coef * g
    z -= k.step_lr * g


FLAG_NAMES = ("flavor", "stepping", "adaptive", "to_eval", "saved")
#: z and v of a step (v: AdamW), y of the switch; z of a switch is its grad. Quantized state
#: (``state_dtype="q8"``/``"q4"``) quantizes v only, with the unsigned map: z and y are
#: points of the param space, kept float32 (the switch reads z as its grad and puts y back
#: as the param, bit for bit), so SGD's state is float32 whatever the format.
SLOTS = (Slot("z", when="stepping", from_param=True, float_state=True),
         Slot("v", when="adaptive", nonneg=True), Slot("y", when="saved", float_state=True))


def _flags_adamw(hp, convention):
    return (KERAS if convention == "keras" else TORCH_L2, 1, 1, 0, 0)


def _flags_sgd(hp, convention):
    return (KERAS if convention == "keras" else TORCH_L2, 1, 0, 0, 0)


def _check_sgd(hp, convention):
    if not 0.0 < float(hp["momentum"]) < 1.0:
        raise ValueError(f"momentum must be in (0, 1) (x is recovered from y by dividing by "
                         f"it), got {hp['momentum']!r}")


def _check_adamw(hp, convention):
    if float(hp["beta_1"]) <= 0.0:
        raise ValueError(f"beta_1 must be in (0, 1) (x is recovered from y by dividing by "
                         f"it), got {hp['beta_1']!r}")


_ONE_WEIGHT_DECAY = ("weight_decay: torch convention, wd * y added to the normalized grad; "
                     "Keras', y -= y * wd * lr before the update.")
_TORCH_ROW = ("step: y = lerp(y, z, c) + lr (b1 (1 - c) - 1) gn; z -= lr gn, with c = "
              "t^r lr_max^weight_lr_power / sum over steps; the params hold y after train() "
              "and x after eval(). " + _ONE_WEIGHT_DECAY)

DOC_ADAMW = r"""Schedule-free AdamW (Defazio et al., 2024, https://arxiv.org/abs/2405.15682), fused.

No learning-rate schedule: the params hold y, an interpolation of the gradient sequence z
(a slot) and its weighted average x. ``eval()`` moves the params to x (one fused pass,
keeping y), ``train()`` back to y, bit for bit; a step is refused in eval mode.

    v = b2 v + (1 - b2) g^2;  gn = g / (sqrt(v / (1 - b2^t)) + eps)
    y = lerp(y, z, c) + lr (b1 (1 - c) - 1) gn;  z -= lr gn

Keras convention (Keras' ScheduleFreeAdamW): c = 1/t, decay ``y -= y * weight_decay * lr``
first. Torch convention (schedulefree's AdamWScheduleFree): c = t^r lr_max^weight_lr_power
over the running sum, decay ``gn += weight_decay * y``.

Args:
    learning_rate: 0.0025, warmed up linearly over ``warmup_steps`` (0).
    beta_1: in (0, 1), 0.9 (the interpolation of y); beta_2: in [0, 1), 0.999.
    epsilon: 1e-8. weight_decay: None or >= 0.
    r, weight_lr_power: torch convention only: 0.0, 2.0.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(3, np.float32)
    >>> opt = fusedopt.ScheduleFreeAdamW(learning_rate=0.5, convention="torch")
    >>> opt.apply_gradients([(np.array([1, -2, 0], np.float32), w)])
    1
    >>> w    # step 1: c = 1, y = z - lr gn with gn = g / |g|
    array([0.5, 1.5, 1. ], dtype=float32)
    >>> opt.eval(); w    # x = z: y = (1 - b1) z + b1 x, with x = z after one step
    array([0.5, 1.5, 1. ], dtype=float32)
"""

DOC_SGD = r"""Schedule-free SGD (Defazio et al., 2024, https://arxiv.org/abs/2405.15682), fused.

    y = lerp(y, z, c) + lr (momentum (1 - c) - 1) g;  z -= lr g

As schedulefree's SGDScheduleFree (``convention="torch"``: c from the lr-weighted running
sum, decay ``g += weight_decay * y``); the Keras convention has c = 1/t and Keras' decay.
``eval()``/``train()`` as :class:`ScheduleFreeAdamW`.

Args:
    learning_rate: 1.0, warmed up over ``warmup_steps`` (0). momentum: in (0, 1), 0.9.
    weight_decay: None or >= 0. r, weight_lr_power: torch convention only: 0.0, 2.0.

Example::

    >>> import numpy as np, fusedopt
    >>> w = np.ones(2, np.float32)
    >>> opt = fusedopt.ScheduleFreeSGD(learning_rate=0.5)
    >>> opt.apply_gradients([(np.array([1, -2], np.float32), w)])
    1
    >>> w
    array([0.5, 2. ], dtype=float32)
"""

ADAMW = declare(
    name="schedulefreeadamw", class_name="ScheduleFreeAdamW", rule=rule,
    keras_name="schedule_free_adam_w",
    unfused=unfused_adamw, doc=DOC_ADAMW, switch=("schedulefreeswitch", "beta_1"),
    hypers=(Hyper("learning_rate", 0.0025, learning_rate), Hyper("beta_1", 0.9, _POSITIVE_BETA),
            Hyper("beta_2", 0.999, _POSITIVE_BETA), Hyper("epsilon", 1e-8, AtLeast(0.0)),
            WEIGHT_DECAY, WARMUP, R, WEIGHT_LR_POWER),
    keras_signature=("learning_rate", "beta_1", "beta_2", "epsilon", "warmup_steps",
                     "weight_decay"),
    check=_check_adamw, flag_names=FLAG_NAMES, flags=_flags_adamw,
    all_flags=((KERAS, 1, 1, 0, 0), (TORCH_L2, 1, 1, 0, 0)), slots=SLOTS, scalar_names=SCALARS,
    scalar_fn=scalars_adamw, running=RUNNING, advance=advance,
    torch=dict(name="AdamWScheduleFree",
               positional=(("lr", 0.0025), ("betas", (0.9, 0.999)), ("eps", 1e-8),
                           ("weight_decay", 0), ("warmup_steps", 0), ("r", 0.0),
                           ("weight_lr_power", 2.0), ("foreach", True)),
               keyword=(), counts_steps=False,
               state=(("z", "z"), ("v", "exp_avg_sq")),
               peer="schedulefree:AdamWScheduleFree", rule=_TORCH_ROW),
    keras=dict(name="ScheduleFreeAdamW",
               state_attributes=(("z", "_momentums"), ("v", "_velocities"))))

SGD = declare(
    name="schedulefreesgd", class_name="ScheduleFreeSGD", rule=rule, unfused=unfused_sgd,
    keras_name="schedule_free_sgd",
    doc=DOC_SGD, switch=("schedulefreeswitch", "momentum"),
    hypers=(Hyper("learning_rate", 1.0, learning_rate), Hyper("momentum", 0.9, _POSITIVE_BETA),
            WEIGHT_DECAY, WARMUP, R, WEIGHT_LR_POWER),
    keras_signature=("learning_rate", "momentum", "warmup_steps", "weight_decay"),
    check=_check_sgd, flag_names=FLAG_NAMES, flags=_flags_sgd,
    all_flags=((KERAS, 1, 0, 0, 0), (TORCH_L2, 1, 0, 0, 0)), slots=SLOTS, scalar_names=SCALARS,
    scalar_fn=scalars_sgd,
    running=RUNNING, advance=advance,
    torch=dict(name="SGDScheduleFree",
               positional=(("lr", 1.0), ("momentum", 0.9), ("weight_decay", 0),
                           ("warmup_steps", 0), ("r", 0.0), ("weight_lr_power", 2.0),
                           ("foreach", True)),
               keyword=(), counts_steps=False, state=(("z", "z"),),
               peer="schedulefree:SGDScheduleFree",
               rule=_TORCH_ROW))


# --- the switch between y (train) and x (eval) -----------------------------------------------

def scalars_switch(hp, step, convention):
    """To eval: ``lerp(y, z, 1 - 1/beta_1)``; to train: ``lerp(x, z, 1 - beta_1)``. The
    weights and their complements are written to round once: ``(beta_1 - 1) / beta_1`` and
    ``1 / beta_1`` (``beta_1 - 1`` is exact), and ``beta_1`` itself. ``1 - 1/beta_1`` rounds
    ``1/beta_1`` first, and for beta_1 within a few ulps of 1 that rounding is the whole
    weight (twice it at 1 - 2**-53); ``1 - (1 - beta_1)`` loses beta_1's low bits."""
    b1 = float(hp["beta_1"])
    if hp["to_eval"]:
        return {**_UNUSED, **_lerp_scalars((b1 - 1.0) / b1, 1.0 / b1)}
    return {**_UNUSED, **_lerp_scalars(1.0 - b1, b1)}


def unfused_switch(xp, p, g, s, k, f):
    if f.to_eval:
        s["y"][...] = p
        _lerp_in_place(xp, p, g, k)
    elif f.saved:
        p[...] = s["y"]
    else:
        _lerp_in_place(xp, p, g, k)


def _unread_switch(flags):
    """Eval writes y without reading it; restoring y reads neither the param nor z."""
    _, _, _, to_eval, saved = flags
    return ("y",) if to_eval else ("p", "g") if saved else ()


def _flags_switch(hp, convention):
    return (KERAS, 0, 0, int(hp["to_eval"]), int(hp["to_eval"] or hp["saved"]))


DOC_SWITCH = r"""The train/eval pass of the schedule-free optimizers, as an optimizer step.

Its "grad" is z. ``to_eval=True``: keep y (the param) in slot ``y`` and move the param to
x = lerp(y, z, 1 - 1/beta_1). ``to_eval=False``: the param becomes the kept ``y``
(``saved=True``, bit for bit) or lerp(x, z, 1 - beta_1) (``saved=False``, as the
schedulefree package). Not a class of its own: ``eval()`` and ``train()`` of
:class:`ScheduleFreeAdamW`, :class:`ScheduleFreeSGD` and their torch and Keras doors run it
(fusedopt/engine/modes.py).
"""

SWITCH = declare(
    name="schedulefreeswitch", class_name="ScheduleFreeSwitch", rule=rule,
    unfused=unfused_switch, doc=DOC_SWITCH, public=False,
    # learning_rate: unused (the move has no step size), taken as every optimizer takes it.
    hypers=(LEARNING_RATE, Hyper("beta_1", 0.9, _POSITIVE_BETA), Hyper("to_eval", True, boolean),
            Hyper("saved", True, boolean)),
    check=_check_adamw, flag_names=FLAG_NAMES, flags=_flags_switch,
    all_flags=((KERAS, 0, 0, 1, 1), (KERAS, 0, 0, 0, 1), (KERAS, 0, 0, 0, 0)), slots=SLOTS,
    scalar_names=SCALARS, scalar_fn=scalars_switch, unread=_unread_switch)

SPECS = (ADAMW, SGD, SWITCH)
__test__ = {"ScheduleFreeAdamW": DOC_ADAMW, "ScheduleFreeSGD": DOC_SGD}
