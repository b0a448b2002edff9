"""Hypothesis strategies written from the registry's declarations, so that a newly registered
optimizer is drawn from without a line here.

A hyperparameter's values come from its check (fusedopt/algorithms/hyper.py): ``AtLeast(low)`` draws
numbers >= low (moderate ones, powers of ten, and any finite float), ``InRange`` numbers in
its interval, ``NoneOr`` None or its inner check's values, ``boolean`` True and False. Any
other check (a function) draws from a broad pool of values and keeps those it accepts.
"""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

from fusedopt.algorithms.hyper import AtLeast, InRange, NoneOr, boolean
from fusedopt.engine.engine import Engine

_ANY_FLOAT = st.floats(allow_nan=False, allow_infinity=False)


def _at_least(low: float):
    return st.one_of(
        st.floats(min_value=low, max_value=max(low, 0.0) + 1.0),
        st.integers(-12, 3).map(lambda e: 10.0 ** e).filter(lambda v: v >= low),
        st.floats(min_value=low, allow_nan=False, allow_infinity=False),
    )


def for_check(check):
    """Values ``check`` accepts, from anywhere in its range."""
    if isinstance(check, AtLeast):
        return _at_least(check.low)
    if isinstance(check, InRange):
        return st.floats(check.low, check.high, exclude_max=not check.closed_high)
    if isinstance(check, NoneOr):
        return st.none() | for_check(check.check)
    if check is boolean:
        return st.booleans()
    pool = st.one_of(st.floats(-1.0, 2.0), _at_least(0.0), _ANY_FLOAT, st.booleans(), st.none())
    return pool.filter(lambda v: check(v) is None)


@st.composite
def hyperparameters(draw, spec, convention: str) -> dict:
    """Hyperparameters of ``spec`` in ``convention``, each anywhere in its valid range (those
    of the other convention only stay at their defaults); combinations the optimizer refuses
    as a whole (torch's Nesterov without momentum) are not drawn."""
    hp = {h.name: draw(for_check(h.check)) for h in spec.hypers if convention in h.conventions}
    try:
        Engine(spec, convention).validate_hyper(hp)
    except ValueError:
        assume(False)
    return hp


#: Shapes: empty, one element (1-D and 0-d), odd sizes, 2-D with odd sides and an empty one.
SHAPES = st.one_of(st.sampled_from([(0,), (1,), (), (5, 0)]),
                   st.integers(2, 300).map(lambda n: (n,)),
                   st.tuples(st.integers(1, 17), st.integers(1, 17)))

#: Loss scales: None (no loss scaling), powers of two, and others.
GRAD_SCALES = st.one_of(st.none(), st.integers(-20, 40).map(lambda k: 2.0 ** k),
                        st.floats(1e-3, 1e6))
