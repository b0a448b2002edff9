"""The algorithms' element rules (fusedopt/algorithms/<family>.py), compiled for the CPU loop.

A rule is plain Python; the loop calls one element function per variant, made from the
rule's own source (fusedopt/algorithms/ruleast.py: the rule language's helpers inlined): it
takes the state slots the loop carries (``s0..s3``, the variant's slots in kernel order) and
the step's scalars ``k`` as a named tuple, binds each of the rule's slot arguments to its
slot (``zero`` for a slot the variant has not), runs the rule's statements with the
variant's flags ``f`` a constant (so LLVM keeps only that variant's branches), and gives
back the new param and slots in the same order. Numba compiles it and inlines it into the
element loop.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect

from numba import njit
from numba.core import types
from numba.extending import intrinsic

from ...algorithms import rulelib
from ...algorithms.ruleast import expand, function
from ...algorithms.spec import MAX_REDUCTIONS
from ...constants import MAX_SLOTS

#: The rules are compiled as functions of their own, which LLVM inlines into the float
#: span's loop (fusedopt/backends/cpu/loop.py indexes raw pointers, so nothing stands
#: between the call and the vectorizer). Numba's own inlining recompiles a callee's IR at
#: every call site; a float variant compiles in about half the time without it
#: (benchmarks/RESULTS.md, "Compile time"). Callers whose loops index Numba arrays take
#: :func:`inlined`.
_RULE = {"error_model": "numpy"}

#: Where the generated element functions say they live (Numba's cache and type names).
_MODULE = __name__


@intrinsic
def _fma(typingctx, a, b, c):
    """LLVM's ``fma``: ``a * b + c`` rounded once, in the compute type of its operands."""
    if not all(isinstance(x, types.Float) for x in (a, b, c)):
        return None
    wide = max((a, b, c), key=lambda t: t.bitwidth)

    def codegen(context, builder, signature, args):
        x, y, z = (context.cast(builder, v, t, wide) for v, t in zip(args, signature.args))
        return builder.fma(x, y, z)

    return wide(a, b, c), codegen


#: The rule language's functions that the CPU loop runs as other than their Python source.
CPU_FUNCTIONS = {"fma": _fma}


def source_digest(spec) -> str:
    """A short digest of the rule's and the helpers' source: part of each element function's
    name, so Numba's on-disk cache never serves a rule's old code."""
    text = inspect.getsource(spec.rule) + (
        inspect.getsource(spec.reductions.rule) if spec.reductions is not None else "") + "".join(
        inspect.getsource(f) for f in rulelib.HELPERS.values())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _name(node: str) -> ast.Name:
    return ast.Name(id=node, ctx=ast.Load())


@functools.lru_cache(maxsize=None)
def inlined(rule):
    """``rule`` (an element or reduction rule of this module) inlined by Numba into its
    caller's IR. A loop over Numba arrays keeps their reference counts around a call it
    cannot see into; LLVM inlines the call after its vectorizer has given up on the loop,
    so the quantized, factored and reduction loops, which index arrays, take this."""
    return njit(inline="always", **_RULE)(rule.py_func)


@functools.lru_cache(maxsize=None)
def element_rule(spec, flags: tuple):
    """``spec``'s rule for variant ``flags`` as the loop calls it:
    ``(p, g, s0, s1, s2, s3, zero, k) -> (p, s0, s1, s2, s3)``."""
    present = spec.slots(flags)
    carried = [f"s{i}" for i in range(MAX_SLOTS)]
    out = [_name("p"), *(_name(n) for n in present), *(_name(c) for c in carried[len(present):])]
    return _compiled(spec, flags, spec.rule, "", lambda returned: out)


@functools.lru_cache(maxsize=None)
def reduction_rule(spec, flags: tuple):
    """``spec``'s reduction rule (its ``reductions.rule``) for variant ``flags``:
    ``(p, g, s0, s1, s2, s3, zero, k) -> (a, b)``, the terms it returns, then ``zero`` up to
    :data:`~fusedopt.algorithms.spec.MAX_REDUCTIONS`."""
    def out(returned):
        terms = list(returned.value.elts)
        return terms + [_name("zero")] * (MAX_REDUCTIONS - len(terms))
    return _compiled(spec, flags, spec.reductions.rule, "reduce_", out)


def _compiled(spec, flags: tuple, rule_fn, prefix: str, outputs):
    """``rule_fn`` (a rule of ``spec``'s language and arguments) for variant ``flags``,
    its slots bound to the carried ``s0..s3`` and its last statement's tuple replaced by
    ``outputs(returned)``, jitted to inline into a loop."""
    present = spec.slots(flags)
    if len(present) > MAX_SLOTS:
        raise ValueError(f"{spec.name} has {len(present)} slots; the loops carry {MAX_SLOTS}")
    carried = [f"s{i}" for i in range(MAX_SLOTS)]
    rule = function(rule_fn)
    where = f"fusedopt/algorithms/{spec.kernel}.py"
    *body, returned = expand([s for s in rule.body if not (
        isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))], where)
    bind = [ast.Assign(targets=[ast.Name(id=s.name, ctx=ast.Store())],
                       value=_name(carried[present.index(s.name)] if s.name in present
                                   else "zero"), lineno=0)
            for s in spec.slot_decls]
    out = outputs(returned)
    name = f"{prefix}{spec.name}_{'_'.join(map(str, flags))}_{source_digest(spec)}"
    made = ast.FunctionDef(
        name=name, args=ast.arguments(posonlyargs=[], args=[ast.arg(arg=a) for a in (
            "p", "g", *carried, "zero", "k")], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[*bind, *body, ast.Return(value=ast.Tuple(elts=out, ctx=ast.Load()))],
        decorator_list=[], returns=None, type_params=[])
    module = ast.fix_missing_locations(ast.Module(body=[made], type_ignores=[]))
    namespace = {**vars(rulelib), **rule_fn.__globals__, **CPU_FUNCTIONS,
                 "f": spec.named_flags(flags),
                 "__name__": _MODULE}  # the helpers inlined read their own module's names
    exec(compile(module, f"<{_MODULE}.{name}>", "exec"), namespace)
    element = namespace[name]
    element.__module__ = _MODULE
    return njit(**_RULE)(element)
