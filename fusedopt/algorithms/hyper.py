"""Hyperparameter declarations and their checks (validation at the boundary).

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
from typing import Any, Callable, Optional

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
