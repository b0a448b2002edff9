"""Hyperparameter declarations and their checks (validation at the boundary)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

Check = Callable[[Any], Optional[str]]  # returns what is wrong, or None


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def at_least(low: float) -> Check:
    def check(value):
        if not _real(value) or not math.isfinite(value) or value < low:
            return f"must be a finite number >= {low:g}"
        return None
    return check


def in_range(low: float, high: float, closed_high: bool = False) -> Check:
    bracket = "]" if closed_high else ")"

    def check(value):
        ok = _real(value) and low <= value and (value <= high if closed_high else value < high)
        return None if ok else f"must be in [{low:g}, {high:g}{bracket}"
    return check


def boolean(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "must be True or False"


def optional(check: Check) -> Check:
    def wrapped(value):
        return None if value is None else check(value)
    return wrapped


def learning_rate(value: Any) -> Optional[str]:
    """A number >= 0, or a schedule: a callable of the iteration count."""
    if callable(value):
        return None
    return at_least(0.0)(value)


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

    def validate(self, value: Any, convention: Optional[str] = None) -> None:
        """Raise ValueError if ``value`` is bad, or is set under a ``convention`` without it."""
        problem = self.check(value)
        if problem:
            raise ValueError(f"{self.name} {problem}, got {value!r}")
        if convention is not None and convention not in self.conventions \
                and value != self.default:
            raise ValueError(f"{self.name} exists only in the {'/'.join(sorted(self.conventions))}"
                             f" convention; drop it or use convention="
                             f"{sorted(self.conventions)[0]!r}")
