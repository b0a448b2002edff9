"""Every optimizer, declared once. The registry drives the public classes, the dispatcher,
the CUDA entry names (and so the compile and machine-code gates), the CPU rules, the
unfused baseline, the test matrix and the benchmark sweep.

To add an optimizer: a kernel in kernels/<family>.cu, a rule in fusedopt/backends/cpu/rules.py, an
expression in fusedopt/algorithms/unfused.py, a reference in tests/reference.py and one entry here.
"""

from __future__ import annotations

import math
import threading
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..backends.cpu import rules
from ..memory.storage import PARAM_DTYPES, Storage, all_storages, default_state_dtype
from . import unfused as _unfused
from .hyper import Hyper, at_least, boolean, in_range, learning_rate, optional

KERAS, TORCH_L2, TORCH_DECOUPLED = rules.KERAS, rules.TORCH_L2, rules.TORCH_DECOUPLED
CONVENTIONS = ("keras", "torch")

#: Param dtypes every optimizer supports (fusedopt/memory/storage.py: grads, state, masters).
DTYPES = PARAM_DTYPES


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer family member as every backend sees it.

    - ``flags(hp, convention)``: the variant, as the CUDA template arguments after the type
      (ints), also handed to the CPU rule and the unfused expression.
    - ``all_flags``: every variant the runtime can request (the compile gate builds each).
    - ``slots(flags)``: names of the state slots, in kernel order.
    - ``slot_init(hp)``: initial value of the slots (0 unless the optimizer says otherwise).
    - ``scalars(hp, step, convention)``: the kernel's scalar arguments for 1-based ``step``,
      computed in double; the first three are always lr, wd, wd_factor.
    - ``check(hp, convention)``: raises ValueError for a combination of hyperparameters that
      each pass their own check but not together (e.g. torch's Nesterov without momentum).
    """

    name: str
    keras_name: str
    kernel: str
    hypers: tuple[Hyper, ...]
    flags: Callable[[Mapping[str, Any], str], tuple[int, ...]]
    all_flags: tuple[tuple[int, ...], ...]
    slots: Callable[[tuple[int, ...]], tuple[str, ...]]
    scalars: Callable[[Mapping[str, Any], int, str], tuple[float, ...]]
    cpu_rule: Any
    unfused: Callable
    slot_init: Callable[[Mapping[str, Any]], float] = lambda hp: 0.0
    check: Callable[[Mapping[str, Any], str], None] = lambda hp, convention: None
    dtypes: tuple[str, ...] = DTYPES

    @property
    def max_slots(self) -> int:
        return max(len(self.slots(f)) for f in self.all_flags)

    def entry(self, storage: Storage | str, flags: tuple[int, ...]) -> str:
        """The CUDA name expression for this variant and storage, e.g.
        ``adam<__nv_bfloat16, __nv_bfloat16, float, 0, 0, 1>``. A dtype name stands for
        its default storage (grads of the param's dtype, default state, no master)."""
        if isinstance(storage, str):
            storage = Storage(storage, storage, default_state_dtype(storage))
        return f"{self.kernel}<{', '.join([storage.template_args(), *map(str, flags)])}>"

    def entries(self) -> list[tuple[Storage, tuple[int, ...], str]]:
        """Every (storage, flags, name expression) the runtime can request."""
        return [(st, f, self.entry(st, f)) for st in all_storages()
                if st.param in self.dtypes for f in self.all_flags]

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hypers}


REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def lookup(name: str) -> OptimizerSpec:
    key = name.lower().replace("_", "")
    if key not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]


# --- shared pieces ---------------------------------------------------------------------------

TORCH_ONLY = frozenset({"torch"})
LEARNING_RATE = Hyper("learning_rate", 0.001, learning_rate)
WEIGHT_DECAY = Hyper("weight_decay", None, optional(at_least(0.0)))
BETA = in_range(0.0, 1.0)
EPSILON = Hyper("epsilon", 1e-7, at_least(0.0))

#: learning rate, the two moment decays and epsilon, with Keras' defaults: Adam's family.
ADAM_LIKE = (
    LEARNING_RATE,
    Hyper("beta_1", 0.9, BETA),
    Hyper("beta_2", 0.999, BETA),
    EPSILON,
)


def decay_scalars(hp: Mapping[str, Any]) -> tuple[float, float, float]:
    """lr, wd, wd_factor = 1 - lr * wd (torch's decoupled factor, rounded once)."""
    lr = float(hp["learning_rate"])
    wd = float(hp["weight_decay"] or 0.0)
    return lr, wd, 1.0 - lr * wd


def _flavor(convention: str, decoupled_in_torch: bool) -> int:
    if convention == "keras":
        return KERAS
    return TORCH_DECOUPLED if decoupled_in_torch else TORCH_L2


# --- Adam family ----------------------------------------------------------------------------

def _adam_scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    bc1, bc2 = 1.0 - b1**step, 1.0 - b2**step
    lr = float(hp["learning_rate"])
    step_size = lr * math.sqrt(bc2) / bc1 if convention == "keras" else lr / bc1
    return (*decay_scalars(hp), b1, b2, 1.0 - b1, 1.0 - b2, float(hp["epsilon"]), step_size,
            math.sqrt(bc2))


#: torch's Adam and NAdam take ``decoupled_weight_decay=True`` for AdamW's decay.
DECOUPLED = Hyper("decoupled_weight_decay", False, boolean, conventions=TORCH_ONLY)


def _adam_family(name, keras_name, decoupled_in_torch, weight_decay, extra=()):
    def flags(hp, conv):
        decoupled = decoupled_in_torch or bool(hp.get("decoupled_weight_decay"))
        return (_flavor(conv, decoupled), int(hp["amsgrad"]))

    return OptimizerSpec(
        name=name,
        keras_name=keras_name,
        kernel="adam",
        hypers=(
            *ADAM_LIKE,
            Hyper("amsgrad", False, boolean),
            weight_decay,
            *extra,
        ),
        flags=flags,
        all_flags=tuple((f, a) for f in (KERAS, TORCH_L2, TORCH_DECOUPLED) for a in (0, 1)),
        slots=lambda flags: ("m", "v", "vhat")[: 3 if flags[1] else 2],
        scalars=_adam_scalars,
        cpu_rule=rules.adam,
        unfused=_unfused.adam,
    )


register(_adam_family("adam", "adam", decoupled_in_torch=False, weight_decay=WEIGHT_DECAY,
                      extra=(DECOUPLED,)))
register(_adam_family("adamw", "adam_w", decoupled_in_torch=True,
                      weight_decay=Hyper("weight_decay", 0.004, at_least(0.0))))


# --- SGD, RMSprop, Adagrad, Adadelta -----------------------------------------------------------
# torch's weight_decay is L2 in all four, so their flavours are KERAS and TORCH_L2 only.

MOMENTUM = Hyper("momentum", 0.0, BETA)
L2_FLAVORS = (KERAS, TORCH_L2)


def _sgd_scalars(hp, step, convention):
    # torch's momentum buffer is g itself on the first step: with the buffer at zero,
    # grad_scale = 1 gives exactly that, and 1 - dampening afterwards.
    first = convention == "keras" or step == 1
    grad_scale = 1.0 if first else 1.0 - float(hp["dampening"])
    return (*decay_scalars(hp), float(hp["momentum"]), grad_scale)


def _sgd_check(hp, convention):
    if convention == "torch" and hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"]):
        raise ValueError("nesterov=True in the torch convention needs momentum > 0 and "
                         f"dampening == 0 (as torch.optim.SGD), got momentum={hp['momentum']!r}, "
                         f"dampening={hp['dampening']!r}")


def _sgd_flags(hp, convention):
    use_momentum = int(hp["momentum"] != 0)
    return (_flavor(convention, False), use_momentum, int(bool(hp["nesterov"])) & use_momentum)


register(OptimizerSpec(
    name="sgd",
    keras_name="sgd",
    kernel="sgd",
    hypers=(
        Hyper("learning_rate", 0.01, learning_rate),
        MOMENTUM,
        Hyper("nesterov", False, boolean),
        WEIGHT_DECAY,
        Hyper("dampening", 0.0, in_range(0.0, 1.0, closed_high=True), TORCH_ONLY),
    ),
    flags=_sgd_flags,
    all_flags=tuple((f, 0, 0) for f in L2_FLAVORS) + tuple((f, 1, n) for f in L2_FLAVORS
                                                            for n in (0, 1)),
    slots=lambda flags: ("momentum",) if flags[1] else (),
    scalars=_sgd_scalars,
    cpu_rule=rules.sgd,
    unfused=_unfused.sgd,
    check=_sgd_check,
))


def _rho_scalars(hp):
    rho = float(hp["rho"])
    return rho, 1.0 - rho


register(OptimizerSpec(
    name="rmsprop",
    keras_name="rm_sprop",
    kernel="rmsprop",
    hypers=(
        LEARNING_RATE,
        Hyper("rho", 0.9, BETA),
        MOMENTUM,
        EPSILON,
        Hyper("centered", False, boolean),
        WEIGHT_DECAY,
    ),
    flags=lambda hp, conv: (_flavor(conv, False), int(hp["momentum"] > 0), int(hp["centered"])),
    all_flags=tuple((f, m, c) for f in L2_FLAVORS for m in (0, 1) for c in (0, 1)),
    slots=lambda flags: ("velocity",) + ("momentum",) * flags[1] + ("average_gradient",) * flags[2],
    scalars=lambda hp, step, conv: (*decay_scalars(hp), *_rho_scalars(hp), float(hp["momentum"]),
                                    float(hp["epsilon"])),
    cpu_rule=rules.rmsprop,
    unfused=_unfused.rmsprop,
))


def _adagrad_scalars(hp, step, convention):
    lr = float(hp["learning_rate"])
    if convention == "torch":
        lr = lr / (1.0 + (step - 1) * float(hp["lr_decay"]))
    return (*decay_scalars(hp), float(hp["epsilon"]), lr)


register(OptimizerSpec(
    name="adagrad",
    keras_name="adagrad",
    kernel="adagrad",
    hypers=(
        LEARNING_RATE,
        Hyper("initial_accumulator_value", 0.1, at_least(0.0)),
        EPSILON,
        WEIGHT_DECAY,
        Hyper("lr_decay", 0.0, at_least(0.0), TORCH_ONLY),
    ),
    flags=lambda hp, conv: (_flavor(conv, False),),
    all_flags=tuple((f,) for f in L2_FLAVORS),
    slots=lambda flags: ("accumulator",),
    scalars=_adagrad_scalars,
    cpu_rule=rules.adagrad,
    unfused=_unfused.adagrad,
    slot_init=lambda hp: float(hp["initial_accumulator_value"]),
))

register(OptimizerSpec(
    name="adadelta",
    keras_name="adadelta",
    kernel="adadelta",
    hypers=(
        LEARNING_RATE,
        Hyper("rho", 0.95, BETA),
        EPSILON,
        WEIGHT_DECAY,
    ),
    flags=lambda hp, conv: (_flavor(conv, False),),
    all_flags=tuple((f,) for f in L2_FLAVORS),
    slots=lambda flags: ("accumulated_grad", "accumulated_delta_var"),
    scalars=lambda hp, step, conv: (*decay_scalars(hp), *_rho_scalars(hp),
                                    float(hp["epsilon"])),
    cpu_rule=rules.adadelta,
    unfused=_unfused.adadelta,
))


# --- Adamax, Nadam, Lion ----------------------------------------------------------------------

def _adamax_scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    bc1 = 1.0 - b1**step
    return (*decay_scalars(hp), b2, 1.0 - b1, float(hp["epsilon"]), bc1,
            float(hp["learning_rate"]) / bc1)


register(OptimizerSpec(
    name="adamax",
    keras_name="adamax",
    kernel="adamax",
    hypers=(
        *ADAM_LIKE,
        WEIGHT_DECAY,
    ),
    flags=lambda hp, conv: (_flavor(conv, decoupled_in_torch=False),),
    all_flags=((KERAS,), (TORCH_L2,)),
    slots=lambda flags: ("m", "u"),
    scalars=_adamax_scalars,
    cpu_rule=rules.adamax,
    unfused=_unfused.adamax,
))


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


def _nadam_scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    psi = 1.0 if convention == "keras" else float(hp["momentum_decay"])
    mu, mu_next = nadam_momentum(b1, psi, step), nadam_momentum(b1, psi, step + 1)
    product = nadam_momentum_product(b1, psi, step, float32=convention == "torch")
    product_next = product * mu_next
    c_m, c_g = mu_next / (1.0 - product_next), (1.0 - mu) / (1.0 - product)
    if convention != "keras":
        lr = float(hp["learning_rate"])
        c_m, c_g = lr * c_m, lr * c_g
    return (*decay_scalars(hp), b2, 1.0 - b1, 1.0 - b2, float(hp["epsilon"]), 1.0 - b2**step,
            c_m, c_g)


register(OptimizerSpec(
    name="nadam",
    keras_name="nadam",
    kernel="nadam",
    hypers=(
        *ADAM_LIKE,
        WEIGHT_DECAY,
        Hyper("momentum_decay", 4e-3, at_least(0.0), conventions=TORCH_ONLY),
        DECOUPLED,
    ),
    flags=lambda hp, conv: (_flavor(conv, bool(hp["decoupled_weight_decay"])),),
    all_flags=((KERAS,), (TORCH_L2,), (TORCH_DECOUPLED,)),
    slots=lambda flags: ("m", "v"),
    scalars=_nadam_scalars,
    cpu_rule=rules.nadam,
    unfused=_unfused.nadam,
))


def _lion_beta_1(value):
    # Keras: at 0 Lion degenerates to signSGD, so beta_1 must be in (0, 1].
    ok = in_range(0.0, 1.0, closed_high=True)(value) is None and value > 0
    return None if ok else "must be in (0, 1] (at 0 Lion is sign SGD)"


def _lion_scalars(hp, step, convention):
    b1, b2 = float(hp["beta_1"]), float(hp["beta_2"])
    return (*decay_scalars(hp), b1, b2, 1.0 - b1, 1.0 - b2)


register(OptimizerSpec(
    name="lion",
    keras_name="lion",
    kernel="lion",
    hypers=(
        LEARNING_RATE,
        Hyper("beta_1", 0.9, _lion_beta_1),
        Hyper("beta_2", 0.99, in_range(0.0, 1.0, closed_high=True)),
        WEIGHT_DECAY,
    ),
    # No torch.optim.Lion: the torch convention keeps the rule and decays the weights the
    # paper's (and torch AdamW's) way, theta *= 1 - lr wd.
    flags=lambda hp, conv: (_flavor(conv, decoupled_in_torch=True),),
    all_flags=((KERAS,), (TORCH_DECOUPLED,)),
    slots=lambda flags: ("m",),
    scalars=_lion_scalars,
    cpu_rule=rules.lion,
    unfused=_unfused.lion,
))
