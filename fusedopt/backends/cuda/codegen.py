"""The CUDA rules, generated from the Python rules: ``python -m fusedopt.backends.cuda.codegen``.

Each family's element rule (fusedopt/algorithms/<family>.py, in the language
fusedopt/algorithms/rulelib.py describes) is translated, through Python's ``ast``, into
``kernels/<family>.cu``: a struct of the step's scalars with named fields, a rule struct
whose ``operator()`` is the rule's body in C++, and the ``__global__`` template the runtime
names (``family<P, G, S, MODE, flags...>``). The shared constants (fusedopt/constants.py)
become ``kernels/constants.cuh``. The files are committed; ``--check`` (and
tests/test_codegen.py) fails when regenerating would change one.

The translation is statement for statement and keeps Python's grouping of every
expression, so the CUDA rule does the same float operations in the same order as the rule
Numba runs: the two backends agree bit for bit wherever both round the same way.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from ... import constants
from ...algorithms.gradsums import GRAD_SUMS
from . import factored_source, output_source, quantized
from . import quantized_source as quantized_source_
from .source import kernel_dir
from .translate import (
    _RESERVED,
    RuleError,
    _assigned,
    _Literals,
    _pascal,
    _Rule,
    _statements,
    expand,
    function,
)

HEADER = "constants.cuh"

# --- a family's file ---------------------------------------------------------------------

def _slot_presence(spec) -> list[tuple[str, str | None]]:
    return [(s.name, None if s.when is None else s.when.upper()) for s in spec.slot_decls]


def _count(presences) -> str:
    fixed = sum(1 for _, flag in presences if flag is None)
    terms = [str(fixed)] if fixed or not presences else []
    terms += [f"({flag} ? 1 : 0)" for _, flag in presences if flag is not None]
    return " + ".join(terms) if terms else "0"


def rule_source(spec) -> str:
    """``kernels/<family>.cu`` for ``spec``'s family."""
    where = f"{spec.rule.__module__.replace('.', '/')}.py"
    node = function(spec.rule)
    expected = ["p", "g", *(s.name for s in spec.slot_decls), "k", "f"]
    if [a.arg for a in node.args.args] != expected:
        raise RuleError(f"{where}: the rule must take ({', '.join(expected)})")
    body = [s for s in node.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if not body or not isinstance(body[-1], ast.Return):
        raise RuleError(f"{where}: the rule must end in `return p, <slots>`")
    returned = body[-1].value
    names = [e.id if isinstance(e, ast.Name) else None
             for e in (returned.elts if isinstance(returned, ast.Tuple) else [returned])]
    outputs = ["p", *(s.name for s in spec.slot_decls)]
    if names != outputs:
        raise RuleError(f"{where}: the rule must end in `return {', '.join(outputs)}`")
    statements = [_Literals().visit(s) for s in expand(body[:-1], where)]
    rule = _Rule(spec, where)
    rule.locals = [n for n in _assigned(statements) if n not in expected]
    for name in rule.locals + outputs:
        if name in _RESERVED or name.upper() == name:
            raise RuleError(f"{where}: {name!r} is reserved in the generated C++; rename it")
    lines = _statements(rule, statements, 2)
    lines = [_restore_ints(line) for line in lines]

    family = _pascal(spec.kernel)
    flags = [f.upper() for f in spec.flag_names]
    presences = _slot_presence(spec)
    doc = (sys.modules[spec.rule.__module__].__doc__ or "").strip().splitlines()
    per_tensor = spec.reductions is not None
    factored = spec.factored is not None
    out = [
        *_header(spec, doc),
        f'#include "{"factored.cuh" if factored else "common.cuh"}"',
        "",
        "namespace fusedopt {",
        "",
        *_scalars_struct(spec, family),
        f"template <typename C, {', '.join(f'int {f}' for f in flags)}>",
        f"struct {family}Rule {{",
        f"    {family}Scalars<C> k;",
        "",
        f"    static constexpr int n_scalars = {len(spec.scalar_names)};",
        _from(spec, f"{family}Rule", per_tensor),
        "",
        "    FUSEDOPT_DEVICE void operator()(C& p, C g, C* s) const {",
    ]
    if any(flag is not None for _, flag in presences):
        out.append("        C spare = C(0);  // a slot the variant has not: read as 0, unstored")
    for i, (name, flag) in enumerate(presences):
        index = _count(presences[:i])
        if flag is None:
            out.append(f"        C& {name} = s[{index}];")
        else:
            out.append(f"        C& {name} = {flag} ? s[{index}] : spare;")
    if rule.locals:
        out.append(f"        C {', '.join(rule.locals)};")
    out += lines
    if factored:  # kernels/factored.cuh: the factor phase, the slice means, the element pass
        return "\n".join(out + _struct_end(flags, _moment(spec, family))[:-1]
                         + factored_source.element_kernels(spec, family))
    out += _struct_end(flags)
    out += [
        f"__global__ void {spec.kernel}(FUSEDOPT_OPTIMIZER_PARAMS(P)"
        + (", const double* __restrict__ tensor_scalars" if per_tensor else "") + ") {",
        "    using C = fusedopt::compute_t<P>;",
        f"    FUSEDOPT_APPLY{'_PER_TENSOR' if per_tensor else ''}(P, G, S, MODE, "
        f"{_count(presences)}, fusedopt::{family}Rule<C, {', '.join(flags)}>);",
        "}",
        "",
    ]
    return "\n".join(out)


def _header(spec, doc) -> list[str]:
    return [
        f"// Generated from {spec.rule.__module__.replace('.', '/')}.py by",
        "// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there",
        "// and regenerate; tests/test_codegen.py fails while this file differs.",
        "//",
        *[f"// {line}".rstrip() for line in doc],
    ]


def _scalars_struct(spec, family: str) -> list[str]:
    lines = ["// The step's scalars, by name, as the host computes them (in double) for a row."]
    if spec.reductions is not None:
        lines.append("// Then the per-tensor ones, made from the reduction phase's sums on the "
                     "device.")
    return [*lines, "template <typename C>", f"struct {family}Scalars {{",
            f"    C {', '.join(spec.row_names)};", "};", ""]


def _from(spec, struct: str, per_tensor: bool) -> str:
    """The rule struct's ``from``: the step's row, and (``per_tensor``) the tensor's
    per-tensor scalars, ``tensor[j * stride]`` (doubles, rounded once); a reduction rule,
    which runs before they exist, reads them as 0."""
    fields = [f"row[{i}]" for i in range(len(spec.scalar_names))]
    extra = spec.reductions.scalar_names if spec.reductions is not None else ()
    if per_tensor:
        fields += [f"C(tensor[{j} * stride])" if j else "C(tensor[0])"
                   for j in range(len(extra))]
        args = "const C* row, const double* tensor, int stride"
    else:
        fields += ["C(0)"] * len(extra)
        args = "const C* row"
    return (f"    static FUSEDOPT_DEVICE {struct} from({args}) "
            f"{{ return {{{{{', '.join(fields)}}}}}; }}")


def reduce_source(spec) -> str:
    """``kernels/<family>_reduce.cu``: ``spec``'s reduction rule (``reductions.rule``) as a
    terms struct and the ``__global__`` template of the reduction phase
    (kernels/reduce.cuh), for an optimizer with per-tensor reductions."""
    where = f"{spec.rule.__module__.replace('.', '/')}.py"
    rule_fn = spec.reductions.rule
    node = function(rule_fn)
    slots = [s.name for s in spec.slot_decls]
    expected = ["p", "g", *slots, "k", "f"]
    body = [s for s in node.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if not body or not isinstance(body[-1], ast.Return):
        raise RuleError(f"{where}: {rule_fn.__name__} must end in `return <terms>`")
    returned = body[-1].value
    terms = returned.elts if isinstance(returned, ast.Tuple) else [returned]
    if len(terms) != len(spec.reductions.names):
        raise RuleError(f"{where}: {rule_fn.__name__} must return the "
                        f"{len(spec.reductions.names)} terms of {spec.reductions.names}")
    statements = [_Literals().visit(s) for s in expand(body[:-1], where)]
    returned = [_Literals().visit(t) for t in terms]
    rule = _Rule(spec, where)
    rule.locals = [n for n in _assigned(statements) if n not in expected]
    for name in rule.locals:
        if name in _RESERVED or name.upper() == name or name in ("out", "terms"):
            raise RuleError(f"{where}: {name!r} is reserved in the generated C++; rename it")
    lines = _statements(rule, statements, 2)
    lines += [f"        out[{i}] = {rule.expression(t)};" for i, t in enumerate(returned)]
    lines = [_restore_ints(line) for line in lines]

    named = [n for part in (*statements, *returned) for n in ast.walk(part)
             if isinstance(n, ast.Name)]
    read = {n.id for n in named if isinstance(n.ctx, ast.Load)}
    mentioned = {n.id for n in named}
    presences = _slot_presence(spec)
    reads = [bit for name, bit in (("p", "READS_P"), ("g", "READS_G")) if name in read]
    for i, (name, flag) in enumerate(presences):
        if name in read:
            bit = f"(READS_SLOT << {_count(presences[:i])})"
            reads.append(bit if flag is None else f"({flag} ? {bit} : 0u)")
    family = _pascal(spec.kernel)
    flags = [f.upper() for f in spec.flag_names]
    stored = spec.reductions.grads_as_stored
    others = read & {"p", "k", *slots}
    if stored and others:
        raise RuleError(f"{where}: {rule_fn.__name__} sums the grads as stored: it may read "
                        f"only g, reads {sorted(others)}")
    out = [
        *_header(spec, [f"The reduction phase of {spec.class_name}: the per-element terms of "
                        f"{', '.join(spec.reductions.names)}", f"({rule_fn.__name__} in "
                        f"{where}), summed per tensor by kernels/reduce.cuh."]),
        f'#include "{"factored_reduce.cuh" if spec.factored is not None else "reduce.cuh"}"',
        "",
        "namespace fusedopt {",
        "",
        *([] if stored else _scalars_struct(spec, family)),
        f"template <typename C{''.join(f', int {f}' for f in flags)}>",
        f"struct {family}Terms {{",
        *([] if stored else [f"    {family}Scalars<C> k;", ""]),
        "    using compute = C;",
        "    // The grad as stored (the grad pre-pass) or as the element pass sees it (clipped).",
        f"    static constexpr bool as_stored = {'true' if stored else 'false'};",
        f"    static constexpr int n_terms = {len(terms)};",
        "    // The operands the terms read (kernels/reduce.cuh): no other is loaded.",
        f"    static constexpr unsigned reads = {' | '.join(reads) or '0u'};",
        *([] if stored else [_from(spec, f"{family}Terms", per_tensor=False)]),
        "",
        "    FUSEDOPT_DEVICE void operator()(C p, C g, const C* s, C* out) const {",
    ]
    if stored:
        out.append("        (void)p;")
        out.append("        (void)s;")
    for i, (name, flag) in enumerate(presences):
        if name not in mentioned:  # a slot the terms never name: no unused local
            continue
        index = _count(presences[:i])
        out.append(f"        C {name} = {'' if flag is None else f'{flag} ? '}s[{index}]"
                   f"{'' if flag is None else ' : C(0)'};")
    if rule.locals:
        out.append(f"        C {', '.join(rule.locals)};")
    out += lines
    if stored:
        return "\n".join(out + _stored_kernels(spec, family))
    if spec.factored is not None:  # kernels/factored_reduce.cuh
        return "\n".join(out + _struct_end(flags, _moment(spec, family))[:-1]
                         + factored_source.reduce_kernel(spec, family))
    out += _struct_end(flags)
    out += [
        f"__global__ void {spec.reduce_kernel}(FUSEDOPT_REDUCE_PARAMS(P)) {{",
        "    using C = fusedopt::compute_t<P>;",
        f"    FUSEDOPT_REDUCE(P, G, S, MODE, {_count(presences)}, "
        f"fusedopt::{family}Terms<C, {', '.join(flags)}>);",
        "}",
        "",
    ]
    return "\n".join(out)


def _stored_kernels(spec, family: str) -> list[str]:
    """The end of the file of a reduction of the grads as stored (the grad pre-pass): its
    kernel, named ``<family>_reduce<G, N>`` (grads of type G, a table of N slots), and
    ``raise_flag`` (a loss-scaled step's flag from the sums of a term that is NaN where a
    grad is not finite)."""
    return ["    }", "};", "", "}  // namespace fusedopt", "",
            "template <typename G, int N>",
            f"__global__ void {spec.reduce_kernel}(FUSEDOPT_STORED_REDUCE_PARAMS) {{",
            f"    FUSEDOPT_STORED_REDUCE(G, N, fusedopt::{family}Terms<double>);",
            "}",
            "",
            "__global__ void raise_flag(int n_tensors, const double* __restrict__ sums,",
            "                           int* __restrict__ flags, long long slot, int or_in) {",
            "    fusedopt::raise_nan_flag(n_tensors, sums, flags, slot, or_in);",
            "}",
            ""]


def quantized_source(spec) -> str:
    """``kernels/<family>_quantized.cu``: ``spec``'s rule over quantized state
    (fusedopt/backends/cuda/quantized_source.py)."""
    return quantized_source_.step_source(spec, _header(spec, [
        f"The rule of kernels/{spec.kernel}.cu over q8 / q4 state (kernels/quantized.cuh)."]),
        _count(_slot_presence(spec)))


def quantized_reduce_source(spec) -> str:
    """``kernels/<family>_reduce_quantized.cu``: ``spec``'s reduction terms over quantized
    slots (kernels/quantized_reduce.cuh)."""
    return quantized_source_.reduce_source(spec, _header(spec, [
        f"The reduction terms of kernels/{spec.reduce_kernel}.cu over q8 / q4 state",
        "(kernels/quantized_reduce.cuh)."]), _count(_slot_presence(spec)))


def _restore_ints(line: str) -> str:
    return re.sub(r"__int_(\d+)", r"C(\1)", line)


def constants_source() -> str:
    """``kernels/constants.cuh`` from fusedopt/constants.py."""
    flavors = ", ".join(f"{k} = {v}" for k, v in constants.FLAVORS.items())
    modes = ", ".join(f"{k.upper()} = {v}" for k, v in constants.MODES.items())
    return "\n".join([
        "// Generated from fusedopt/constants.py by `python -m fusedopt.backends.cuda.codegen",
        "// --write`: do not edit. What each constant means is said there.",
        "#pragma once",
        "",
        "namespace fusedopt {",
        "",
        f"enum Flavor {{ {flavors} }};",
        f"enum Mode {{ {modes} }};",
        f"enum Limits {{ MAX_SLOTS = {constants.MAX_SLOTS} }};",
        "",
        "}  // namespace fusedopt",
        "",
    ])


def _moment(spec, family: str) -> list[str]:
    """A factored moment's ``<Family>Moment`` struct (fusedopt/backends/cuda/factored_source.py)."""
    return factored_source.moment_struct(spec, family, _from(spec, f"{family}Moment", False))


def _struct_end(flags, more=()) -> list[str]:
    """The lines that close a generated rule's struct (then ``more``) and namespace and open
    its kernel's template (flags: the variant flags, its template parameters after the
    storage)."""
    return ["    }", "};", "", *more, "}  // namespace fusedopt", "",
            f"template <typename P, typename G, typename S, int MODE, "
            f"{', '.join(f'int {f}' for f in flags)}>"]


def generated(specs=None) -> dict[str, str]:
    """Every generated file of kernels/ (for ``specs``, default every registered optimizer
    and the grad pre-pass's reduction, fusedopt/algorithms/gradsums.py), by name -> its
    text."""
    files = {HEADER: constants_source()}
    if specs is None:
        from ...algorithms.registry import REGISTRY
        specs = REGISTRY.values()
        files[f"{GRAD_SUMS.reduce_kernel}.cu"] = reduce_source(GRAD_SUMS)
    for spec in specs:
        if spec.matrix is not None:  # Muon: the kernels of its two element passes
            files.update({f"{p.kernel}.cu": rule_source(p) for p in (spec.matrix.momentum,
                                                                     spec.matrix.weight)})
            if quantized.covers(spec.matrix.momentum):  # and its momentum over codes
                part = spec.matrix.momentum
                files[f"{quantized.family(part.kernel)}.cu"] = output_source.source(
                    part, _header(part, output_source.doc(part)))
            continue
        made = {f"{spec.kernel}.cu": rule_source(spec)}
        if quantized.covers(spec):
            made[f"{quantized.family(spec.kernel)}.cu"] = quantized_source(spec)
        if spec.reduce_kernel is not None:
            made[f"{spec.reduce_kernel}.cu"] = reduce_source(spec)
            if quantized.covers(spec):
                made[f"{quantized.family(spec.reduce_kernel)}.cu"] = quantized_reduce_source(spec)
        for name, text in made.items():
            if files.setdefault(name, text) != text:
                raise RuleError(f"two optimizers of family {spec.kernel} declare different "
                                "rules")
    return files


def stale(folder: Path | None = None, specs=None) -> list[str]:
    """The generated files whose committed text differs from what the rules give now."""
    folder = folder or kernel_dir()
    return [name for name, text in generated(specs).items()
            if not (folder / name).exists() or (folder / name).read_text() != text]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedopt.backends.cuda.codegen",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write the files into kernels/")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed file differs from its rule")
    args = parser.parse_args(argv)
    folder = kernel_dir()
    if args.write:
        for name, text in generated().items():
            (folder / name).write_text(text)
        return 0
    changed = stale(folder)
    for name in changed:
        print(f"kernels/{name} differs from its rule: run "
              "`python -m fusedopt.backends.cuda.codegen --write`", file=sys.stderr)
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
