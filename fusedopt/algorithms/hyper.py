"""Hyperparameter declarations and their checks (validation at the boundary), the
hyperparameters families share, and the weight-decay scalars derived from them.

A check is a callable of the value that returns what is wrong with it, or None. The checks
are small frozen classes (``AtLeast``, ``InRange``, ``NoneOr``) or module-level functions,
never closures, so that an optimizer holding them pickles and deep-copies; their fields
(``low``, ``high``, ...) also say what the valid values are, which the property tests read
to draw hyperparameters anywhere in their ranges.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from ..constants import KERAS, TORCH_DECOUPLED, TORCH_L2

Check = Callable[[Any], Optional[str]]  # returns what is wrong, or None


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class AtLeast:
    """A finite number >= ``low``."""

    low: float

    def __call__(self, value) -> Optional[str]:
        if not _real(value) or not math.isfinite(value) or value < self.low:
            return f"must be a finite number >= {self.low:g}"
        return None


@dataclass(frozen=True)
class InRange:
    """A number in [``low``, ``high``), or [``low``, ``high``] when ``closed_high``."""

    low: float
    high: float
    closed_high: bool = False

    def __call__(self, value) -> Optional[str]:
        high_ok = _real(value) and (value <= self.high if self.closed_high else value < self.high)
        if _real(value) and self.low <= value and high_ok:
            return None
        bracket = "]" if self.closed_high else ")"
        return f"must be in [{self.low:g}, {self.high:g}{bracket}"


@dataclass(frozen=True)
class NoneOr:
    """None, or a value ``check`` accepts."""

    check: Check

    def __call__(self, value) -> Optional[str]:
        return None if value is None else self.check(value)


def at_least(low: float) -> Check:
    return AtLeast(low)


def in_range(low: float, high: float, closed_high: bool = False) -> Check:
    return InRange(low, high, closed_high)


def optional(check: Check) -> Check:
    return NoneOr(check)


def boolean(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "must be True or False"


_NON_NEGATIVE = AtLeast(0.0)


def learning_rate(value: Any) -> Optional[str]:
    """A number >= 0, or a schedule: a callable of the iteration count."""
    if callable(value):
        return None
    return _NON_NEGATIVE(value)


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its Keras-style name, default, check, and where it exists.

    ``conventions`` names the conventions whose real library has the argument; passing a
    non-default value under another convention is an error (it would be ignored there).
    """

    name: str
    default: Any
    check: Check
    conventions: frozenset = field(default=frozenset({"keras", "torch"}))

    def validate(self, value: Any, convention: Optional[str] = None,
                 name: Optional[str] = None) -> None:
        """Raise ValueError if ``value`` is bad, or is set under a ``convention`` without it;
        the message names it ``name`` (a front door's own argument name; default its own)."""
        name = name or self.name
        problem = self.check(value)
        if problem:
            raise ValueError(f"{name} {problem}, got {value!r}")
        if convention is not None and convention not in self.conventions \
                and value != self.default:
            raise ValueError(f"{name} exists only in the {'/'.join(sorted(self.conventions))}"
                             f" convention; drop it or use convention="
                             f"{sorted(self.conventions)[0]!r}")


# --- pieces families share ------------------------------------------------------------------

TORCH_ONLY = frozenset({"torch"})
LEARNING_RATE = Hyper("learning_rate", 0.001, learning_rate)
WEIGHT_DECAY = Hyper("weight_decay", None, optional(at_least(0.0)))
BETA = in_range(0.0, 1.0)
EPSILON = Hyper("epsilon", 1e-7, at_least(0.0))
MOMENTUM = Hyper("momentum", 0.0, BETA)
#: torch's Adam and NAdam take ``decoupled_weight_decay=True`` for AdamW's decay.
DECOUPLED = Hyper("decoupled_weight_decay", False, boolean, conventions=TORCH_ONLY)

#: learning rate, the two moment decays and epsilon, with Keras' defaults: Adam's family.
ADAM_LIKE = (
    LEARNING_RATE,
    Hyper("beta_1", 0.9, BETA),
    Hyper("beta_2", 0.999, BETA),
    EPSILON,
)

#: The flavours of torch optimizers whose weight_decay is L2.
L2_FLAVORS = (KERAS, TORCH_L2)

#: The scalars every rule's weight decay reads.
DECAY_SCALARS = ("lr", "wd", "wd_factor")


def decay_scalars(hp: Mapping[str, Any]) -> dict[str, float]:
    """lr, wd, and wd_factor = 1 - lr * wd, the factor of decoupled decay
    (``theta *= wd_factor``), in float64 as torch computes it from Python floats; the pass
    rounds it once, to the compute type. Keras' ``theta -= theta * wd * lr`` is the same
    product, rounded once rather than twice."""
    lr = float(hp["learning_rate"])
    wd = float(hp["weight_decay"] or 0.0)
    return {"lr": lr, "wd": wd, "wd_factor": 1.0 - lr * wd}


def flavor(convention: str, decoupled_in_torch: bool) -> int:
    """The weight-decay flavour of ``convention``."""
    if convention == "keras":
        return KERAS
    return TORCH_DECOUPLED if decoupled_in_torch else TORCH_L2
