"""The algorithms' element rules (fusedopt/algorithms/<family>.py), compiled for the CPU loop.

A rule is plain Python; here it is compiled by Numba as it is, its library helpers
(fusedopt/algorithms/rulelib.py) bound to their jitted selves. The loop calls one
:func:`element_rule` per variant: the rule with the variant's flags frozen in as constants
(so LLVM keeps only that variant's branches), taking the state slots the loop carries
(``s0..s2``, the variant's slots in kernel order) and the step's scalars ``k`` as a named
tuple, and giving back the new param and slots in the same order.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import types

from numba import njit

from ...algorithms import rulelib
from ...constants import MAX_SLOTS

_RULE = {"inline": "always", "error_model": "numpy"}

#: Where the generated element functions say they live (Numba's cache and type names).
_MODULE = __name__


@functools.lru_cache(maxsize=None)
def _helpers() -> dict:
    return {name: njit(**_RULE)(function) for name, function in rulelib.HELPERS.items()}


@functools.lru_cache(maxsize=None)
def jitted(rule):
    """``rule`` compiled by Numba (inlined where called), with the helpers it calls jitted."""
    namespace = {**rule.__globals__, **_helpers()}
    clone = types.FunctionType(rule.__code__, namespace, rule.__name__, rule.__defaults__,
                               rule.__closure__)
    clone.__qualname__ = rule.__qualname__
    return njit(**_RULE)(clone)


def source_digest(spec) -> str:
    """A short digest of the rule's and the helpers' source: part of each compiled element
    function's name, so Numba's on-disk cache never serves a rule's old code."""
    text = inspect.getsource(spec.rule) + "".join(
        inspect.getsource(f) for f in rulelib.HELPERS.values())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def element_rule(spec, flags: tuple):
    """``spec``'s rule for variant ``flags`` as the loop calls it:
    ``(p, g, s0, s1, s2, zero, k) -> (p, s0, s1, s2)``, where ``s0..`` are the variant's
    slots in kernel order (``zero`` stands in for a slot the variant has not)."""
    present = spec.slots(flags)
    if len(present) > MAX_SLOTS:
        raise ValueError(f"{spec.name} has {len(present)} slots; the loops carry {MAX_SLOTS}")
    carried = [f"s{i}" for i in range(MAX_SLOTS)]
    arguments = [carried[present.index(s.name)] if s.name in present else "zero"
                 for s in spec.slot_decls]
    results = [f"r_{s.name}" for s in spec.slot_decls]
    returned = [results[[s.name for s in spec.slot_decls].index(name)] for name in present]
    returned += carried[len(present):]
    name = f"{spec.name}_{'_'.join(map(str, flags))}_{source_digest(spec)}"
    text = (f"def {name}(p, g, {', '.join(carried)}, zero, k):\n"
            f"    {', '.join(['p', *results])}, = rule({', '.join(['p', 'g', *arguments])}, k,"
            f" flags)\n"
            f"    return {', '.join(['p', *returned])}\n")
    namespace = {"rule": jitted(spec.rule), "flags": spec.named_flags(flags),
                 "__name__": _MODULE}
    exec(compile(text, f"<{_MODULE}.{name}>", "exec"), namespace)
    function = namespace[name]
    function.__module__ = _MODULE
    return njit(**_RULE)(function)
