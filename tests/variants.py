"""Every variant of every registered optimizer, found from the registry alone.

A variant is one of ``spec.all_flags``; :func:`variants` finds hyperparameters and a
convention that select each by trying values of every hyperparameter (defaults first), so
a newly registered optimizer is covered without naming it here.
"""

from __future__ import annotations

import itertools

import fusedopt
from fusedopt.algorithms.registry import CONVENTIONS, REGISTRY

#: Numbers tried for a hyperparameter besides its default (the ones its check accepts).
PROBES = (0.5, 0.1, 0.0, 1.0, 2.0)

#: Weight decay given to every variant that has one, so that decay is exercised.
WEIGHT_DECAY = 0.05


def _candidates(h, convention):
    if convention not in h.conventions:
        return [h.default]
    values = [h.default]
    if h.check(True) is None and h.check(False) is None:
        return [h.default, not h.default]
    allowed = [v for v in PROBES if v != h.default and h.check(v) is None]
    if not any(v > 0 for v in allowed):  # a number <= 0 (Ftrl's learning_rate_power): the
        # probes negated first, so that a variant is not chosen at 0 alone (a power of 0)
        allowed = [-v for v in PROBES if v > 0 and -v != h.default and h.check(-v) is None
                   ] + allowed
    return values + allowed


def variants(spec):
    """[(hyper, convention, flags)]: one for each of ``spec.all_flags`` that hyperparameters
    can select (some flags only exist for a sibling, e.g. torch's decoupled decay is AdamW's;
    tests at the backend level take ``all_flags`` directly)."""
    found: dict[tuple, tuple[dict, str]] = {}
    for convention in CONVENTIONS:
        names = [h.name for h in spec.hypers]
        pools = [_candidates(h, convention) for h in spec.hypers]
        for values in itertools.product(*pools):
            hp = dict(zip(names, values))
            flags = tuple(spec.flags(hp, convention))
            if flags in found:
                continue
            decays = {h.name: h for h in spec.hypers}.get("weight_decay")
            if decays is not None and convention in decays.conventions:
                decayed = dict(hp, weight_decay=WEIGHT_DECAY)
                if tuple(spec.flags(decayed, convention)) == flags:
                    hp = decayed
            found[flags] = (hp, convention)
            if len(found) == len(spec.all_flags):
                break
    assert found, f"{spec.name}: no hyperparameters select any of its flags"
    return [(hp, conv, flags) for flags, (hp, conv) in found.items()]


def matrix():
    """(name, hyper, convention) for every variant of every registered optimizer that steps
    params of any shape (not Muon's: tests/cases.py MATRIX_ONLY, tested in tests/test_muon.py
    on matrices)."""
    from cases import MATRIX_ONLY
    return [(name, hp, conv) for name in sorted(set(REGISTRY) - MATRIX_ONLY)
            for hp, conv, _ in variants(REGISTRY[name])]


def matrix_ids(cases=None):
    return [f"{name}-{conv}-" + "-".join(map(str, REGISTRY[name].flags(hp, conv)))
            for name, hp, conv in (matrix() if cases is None else cases)]


def first_of_each():
    """The first variant of every optimizer :func:`matrix` has: a property of the engine or
    the backend that does not depend on the rule's flags is checked once per rule (each
    variant more is one more compiled loop)."""
    seen, out = set(), []
    for name, hp, conv in matrix():
        if name not in seen:
            seen.add(name)
            out.append((name, hp, conv))
    return out


def make(name, hp, convention, backend="cpu", **options):
    """A public optimizer of registered ``name`` (its class when it has one); ``options``:
    the storage arguments every optimizer takes (state_dtype, stochastic_rounding, ...)."""
    cls = {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}.get(name)
    if cls is None:  # a registered optimizer without a class yet: the base class drives it
        opt = fusedopt.Optimizer.__new__(fusedopt.Optimizer)
        opt.spec_name = name
        fusedopt.Optimizer.__init__(opt, convention=convention, backend=backend, **hp,
                                    **options)
        return opt
    return cls(**hp, convention=convention, backend=backend, **options)
