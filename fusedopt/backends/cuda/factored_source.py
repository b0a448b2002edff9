"""The generated parts of a factored moment's kernels (``factored`` in
fusedopt/algorithms/spec.py: Adafactor): its ``square``, ``moment`` and ``estimate``
translated into a ``<Family>Moment`` struct, and the ``__global__`` templates of its phases
over kernels/factored.cuh and kernels/factored_reduce.cuh. fusedopt/backends/cuda/codegen.py
puts them into ``kernels/<family>.cu`` and ``kernels/<family>_reduce.cu``."""

from __future__ import annotations

import ast

from .translate import (
    _RESERVED,
    RuleError,
    _assigned,
    _Literals,
    _Rule,
    _statements,
    expand,
    function,
)

#: The functions of ``Factored`` the kernels call, by their member name.
FUNCTIONS = ("square", "moment", "estimate")


def _device_function(spec, name: str, fn, where: str) -> list[str]:
    """``fn`` (rule language, arguments ``(<values>, k, f)``, ending in ``return <expr>``) as
    a const member function ``C name(C <values>...)``."""
    node = function(fn)
    args = [a.arg for a in node.args.args]
    if args[-2:] != ["k", "f"]:
        raise RuleError(f"{where}: {fn.__name__} must take (<values>, k, f)")
    values = args[:-2]
    body = [s for s in node.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
        raise RuleError(f"{where}: {fn.__name__} must end in `return <value>`")
    statements = [_Literals().visit(s) for s in expand(body[:-1], where)]
    returned = _Literals().visit(body[-1].value)
    rule = _Rule(spec, where)
    assigned = [n for n in _assigned(statements) if n not in values]
    rule.locals = values + assigned
    for local in rule.locals:
        if local in _RESERVED or local.upper() == local:
            raise RuleError(f"{where}: {local!r} in {fn.__name__} is reserved in the "
                            "generated C++; rename it")
    lines = [f"    FUSEDOPT_DEVICE C {name}({', '.join(f'C {v}' for v in values)}) const {{"]
    if assigned:
        lines.append(f"        C {', '.join(assigned)};")
    lines += _statements(rule, statements, 2)
    lines += [f"        return {rule.expression(returned)};", "    }"]
    return lines


def moment_struct(spec, family: str, from_line: str) -> list[str]:
    """The ``<Family>Moment`` struct: the step's scalars and the three functions."""
    where = f"{spec.rule.__module__.replace('.', '/')}.py"
    lines = ["// The factored moment (kernels/factored.cuh): square, moment and estimate of the",
             "// algorithm, on one value each.",
             f"template <typename C, {', '.join(f'int {f.upper()}' for f in spec.flag_names)}>",
             f"struct {family}Moment {{", f"    {family}Scalars<C> k;", "", from_line, ""]
    for name in FUNCTIONS:
        lines += _device_function(spec, name, getattr(spec.factored, name), where)
    return [*lines, "};", ""]


def _template(spec) -> str:
    return (f"template <typename P, typename G, typename S, int MODE, "
            f"{', '.join(f'int {f.upper()}' for f in spec.flag_names)}>")


def _types(spec, family: str, first: str) -> str:
    flags = ", ".join(f.upper() for f in spec.flag_names)
    return f"fusedopt::{family}{first}<C, {flags}>, fusedopt::{family}Moment<C, {flags}>"


def element_kernels(spec, family: str) -> list[str]:
    """The element pass (``<kernel>``), the factor phase (``<kernel>_factor``) and the slice
    means (``<kernel>_means``), after the rule struct's namespace."""
    k, template = spec.kernel, _template(spec)
    return [
        template,
        f"__global__ void {k}(FUSEDOPT_FACTORED_PARAMS(P),",
        "                    const fusedopt::compute_t<P>* __restrict__ denominators,",
        "                    const double* __restrict__ tensor_scalars) {",
        "    using C = fusedopt::compute_t<P>;",
        f"    FUSEDOPT_APPLY_FACTORED(P, G, S, MODE, {_types(spec, family, 'Rule')});",
        "}",
        "",
        template,
        f"__global__ void {k}_factor(FUSEDOPT_FACTORED_PARAMS(P)) {{",
        "    using C = fusedopt::compute_t<P>;",
        f"    FUSEDOPT_MOVE_FACTORS(P, G, S, MODE, fusedopt::{family}Moment<C, "
        f"{', '.join(f.upper() for f in spec.flag_names)}>);",
        "}",
        "",
        template,
        f"__global__ void {k}_means(FUSEDOPT_FACTORED_PARAMS(P), double* __restrict__ means) {{",
        "    (void)rows;",
        "    (void)control;",
        "    (void)flags;",
        "    fusedopt::slice_means<P, G, S, MODE>(table, n_tensors, chunk, shapes, means);",
        "}",
        "",
    ]


def reduce_kernel(spec, family: str) -> list[str]:
    """The reduction phase (``<kernel>_reduce``), after the terms struct's namespace."""
    return [
        _template(spec),
        f"__global__ void {spec.reduce_kernel}(FUSEDOPT_FACTORED_PARAMS(P),",
        "                    const fusedopt::compute_t<P>* __restrict__ denominators,",
        "                    double* __restrict__ partial) {",
        "    using C = fusedopt::compute_t<P>;",
        f"    FUSEDOPT_REDUCE_FACTORED(P, G, S, MODE, {_types(spec, family, 'Terms')});",
        "}",
        "",
    ]
