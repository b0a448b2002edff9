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
import copy
import inspect
import re
import sys
import textwrap
from pathlib import Path

from ... import constants
from ...algorithms import rulelib
from .source import kernel_dir

HEADER = "constants.cuh"
_RESERVED = {"k", "s", "spare", "C", "P", "G", "S", "MODE", "auto", "int", "float", "double",
             "const", "return", "if", "else", "for", "while", "struct", "template", "class",
             "new", "delete", "this", "register", "signed", "unsigned", "short", "long", "char",
             "default", "switch", "case", "break", "continue", "goto", "static", "volatile"}


class RuleError(ValueError):
    """A rule outside the language the translator (and the CPU loop) accepts."""


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _function(fn) -> ast.FunctionDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


# --- expressions -------------------------------------------------------------------------

_BINARY = {ast.Add: ("+", 6), ast.Sub: ("-", 6), ast.Mult: ("*", 7), ast.Div: ("/", 7)}
_COMPARE = {ast.Lt: "<", ast.Gt: ">", ast.LtE: "<=", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_ATOM = 9


class _Rule:
    """One rule's translation state: what its names mean in C++."""

    def __init__(self, spec, where: str):
        self.spec, self.where = spec, where
        self.flags = set(spec.flag_names)
        self.scalars = set(spec.scalar_names)
        self.slots = [s.name for s in spec.slot_decls]
        self.locals: list[str] = []

    def fail(self, node, message: str):
        line = getattr(node, "lineno", "?")
        raise RuleError(f"{self.where}, line {line} of the rule: {message}")

    def expression(self, node, parent: int = 0, right: bool = False) -> str:
        text, precedence = self._expression(node)
        needs = precedence < parent or (right and precedence == parent)
        return f"({text})" if needs else text

    def _expression(self, node) -> tuple[str, int]:
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            op, precedence = _BINARY[type(node.op)]
            left = self.expression(node.left, precedence)
            right = self.expression(node.right, precedence, right=True)
            return f"{left} {op} {right}", precedence
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return f"-{self.expression(node.operand, 8, right=True)}", 8
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return f"!{self.expression(node.operand, 8, right=True)}", 8
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARE:
                self.fail(node, "one comparison at a time (<, >, <=, >=, ==, !=)")
            left = self.expression(node.left, 5, right=True)
            right = self.expression(node.comparators[0], 5, right=True)
            return f"{left} {_COMPARE[type(node.ops[0])]} {right}", 5
        if isinstance(node, ast.BoolOp):
            op, precedence = ("&&", 3) if isinstance(node.op, ast.And) else ("||", 2)
            parts = [self.expression(v, precedence, right=True) for v in node.values]
            return f" {op} ".join(parts), precedence
        if isinstance(node, ast.IfExp):
            test = self.expression(node.test, 2, right=True)
            body = self.expression(node.body, 2, right=True)
            orelse = self.expression(node.orelse, 2, right=True)
            return f"{test} ? {body} : {orelse}", 1
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, field = node.value.id, node.attr
            if owner == "k":
                if field not in self.scalars:
                    self.fail(node, f"k.{field} is no scalar of {self.spec.name} "
                                    f"(its scalars: {', '.join(self.spec.scalar_names)})")
                return f"k.{field}", _ATOM
            if owner == "f":
                if field not in self.flags:
                    self.fail(node, f"f.{field} is no flag of {self.spec.name}")
                return field.upper(), _ATOM
            self.fail(node, f"{owner}.{field}: only k.<scalar> and f.<flag> are attributes")
        if isinstance(node, ast.Name):
            if node.id.startswith("__int_"):  # an integer compared with (_Literals)
                return node.id, _ATOM
            if node.id in constants.FLAVORS:
                return node.id, _ATOM
            if node.id in ("p", "g", *self.slots, *self.locals):
                return node.id, _ATOM
            self.fail(node, f"{node.id!r} is not a param, grad, slot, local or flavour")
        if isinstance(node, ast.Constant):
            self.fail(node, f"the literal {node.value!r} is allowed only in a comparison "
                            "(float literals never: pass constants as scalars)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            if name in rulelib.BUILTINS and len(node.args) == 1 and not node.keywords:
                return f"{rulelib.BUILTINS[name]}({self.expression(node.args[0])})", _ATOM
            if name in rulelib.HELPERS:
                self.fail(node, f"{name}() returns a tuple: call it as `a, b = {name}(...)`")
        self.fail(node, f"{ast.unparse(node)!r} is outside the rule language "
                        "(fusedopt/algorithms/rulelib.py)")


class _Literals(ast.NodeTransformer):
    """Integer literals compared with a value become ``C(n)`` placeholders; any other literal
    is left for the translator to refuse."""

    def visit_Compare(self, node):
        self.generic_visit(node)
        for i, operand in enumerate([node.left, *node.comparators]):
            if isinstance(operand, ast.Constant) and type(operand.value) is int:
                replacement = ast.Name(id=f"__int_{operand.value}", ctx=ast.Load())
                if i == 0:
                    node.left = replacement
                else:
                    node.comparators[i - 1] = replacement
        return node


class _Substitute(ast.NodeTransformer):
    def __init__(self, mapping):
        self.mapping = mapping

    def visit_Name(self, node):
        if node.id in self.mapping:
            return copy.deepcopy(self.mapping[node.id])
        return node


def _inline(call_targets, call, where: str) -> list:
    """The statements of helper ``call`` (an ``ast.Call`` of a rulelib helper) with its
    arguments substituted, assigning its returned tuple to ``call_targets``."""
    name = call.func.id
    helper = _function(rulelib.HELPERS[name])
    params = [a.arg for a in helper.args.args]
    if len(call.args) != len(params) or call.keywords:
        raise RuleError(f"{where}: {name}() takes {', '.join(params)}, positionally")
    mapping = dict(zip(params, call.args))
    body = [s for s in helper.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    *statements, returned = body
    if not isinstance(returned, ast.Return) or not isinstance(returned.value, ast.Tuple):
        raise RuleError(f"{where}: helper {name} must end in `return a, b`")
    for node in ast.walk(ast.Module(body=statements, type_ignores=[])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            if not isinstance(mapping.get(node.id), ast.Name):
                raise RuleError(f"{where}: {name}() assigns its argument {node.id!r}; "
                                "pass a name there")
    substituted = [_Substitute(mapping).visit(copy.deepcopy(s)) for s in statements]
    outputs = [_Substitute(mapping).visit(copy.deepcopy(e)) for e in returned.value.elts]
    if len(outputs) != len(call_targets):
        raise RuleError(f"{where}: {name}() returns {len(outputs)} values")
    for target, value in zip(call_targets, outputs):
        if not (isinstance(value, ast.Name) and value.id == target.id):
            substituted.append(ast.Assign(targets=[target], value=value, lineno=call.lineno))
    for node in substituted:
        ast.fix_missing_locations(node)
    return substituted


def _expand(statements, where: str) -> list:
    """``statements`` with every helper call inlined (recursively into ``if`` blocks)."""
    out = []
    for node in statements:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Name) \
                and node.value.func.id in rulelib.HELPERS:
            target = node.targets[0]
            targets = target.elts if isinstance(target, ast.Tuple) else [target]
            out += _expand(_inline(targets, node.value, where), where)
        elif isinstance(node, ast.If):
            node.body = _expand(node.body, where)
            node.orelse = _expand(node.orelse, where)
            out.append(node)
        else:
            out.append(node)
    return out


# --- statements --------------------------------------------------------------------------

def _statements(rule: _Rule, nodes, depth: int) -> list[str]:
    pad = "    " * depth
    lines = []
    for node in nodes:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if isinstance(node, ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                rule.fail(node, "assign to one name (a tuple only from a rulelib helper)")
            name = node.targets[0].id
            if name in ("k", "f") or name in rule.spec.flag_names:
                rule.fail(node, f"{name} cannot be assigned")
            lines.append(f"{pad}{name} = {rule.expression(node.value)};")
        elif isinstance(node, ast.If):
            lines += _if(rule, node, depth, keyword="if")
        else:
            rule.fail(node, f"{type(node).__name__} is outside the rule language "
                            "(assignments, if/elif/else and one final return)")
    return lines


def _if(rule: _Rule, node: ast.If, depth: int, keyword: str) -> list[str]:
    pad = "    " * depth
    lines = [f"{pad}{keyword} ({rule.expression(node.test)}) {{"]
    lines += _statements(rule, node.body, depth + 1)
    orelse = node.orelse
    if len(orelse) == 1 and isinstance(orelse[0], ast.If):
        elif_lines = _if(rule, orelse[0], depth, keyword="if")
        lines.append(f"{pad}}} else {elif_lines[0].lstrip()}")
        lines += elif_lines[1:]
        return lines
    if orelse:
        lines.append(f"{pad}}} else {{")
        lines += _statements(rule, orelse, depth + 1)
    lines.append(f"{pad}}}")
    return lines


def _assigned(nodes) -> list[str]:
    names: dict[str, None] = {}
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                names.setdefault(sub.id)
    return list(names)


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
    where = f"fusedopt/algorithms/{spec.kernel}.py"
    node = _function(spec.rule)
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
    statements = [_Literals().visit(s) for s in _expand(body[:-1], where)]
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
    scalars = ", ".join(spec.scalar_names)
    rows = ", ".join(f"row[{i}]" for i in range(len(spec.scalar_names)))
    doc = (sys.modules[spec.rule.__module__].__doc__ or "").strip().splitlines()
    out = [
        f"// Generated from fusedopt/algorithms/{spec.kernel}.py by",
        "// `python -m fusedopt.backends.cuda.codegen --write`: do not edit. Edit the rule there",
        "// and regenerate; tests/test_codegen.py fails while this file differs.",
        "//",
        *[f"// {line}".rstrip() for line in doc],
        '#include "common.cuh"',
        "",
        "namespace fusedopt {",
        "",
        "// The step's scalars, by name, as the host computes them (in double) for a row.",
        "template <typename C>",
        f"struct {family}Scalars {{",
        f"    C {scalars};",
        "};",
        "",
        f"template <typename C, {', '.join(f'int {f}' for f in flags)}>",
        f"struct {family}Rule {{",
        f"    {family}Scalars<C> k;",
        "",
        f"    static constexpr int n_scalars = {len(spec.scalar_names)};",
        f"    static FUSEDOPT_DEVICE {family}Rule from(const C* row) {{ return {{{{{rows}}}}}; }}",
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
    out += [
        "    }",
        "};",
        "",
        "}  // namespace fusedopt",
        "",
        f"template <typename P, typename G, typename S, int MODE, "
        f"{', '.join(f'int {f}' for f in flags)}>",
        f"__global__ void {spec.kernel}(FUSEDOPT_OPTIMIZER_PARAMS(P)) {{",
        "    using C = fusedopt::compute_t<P>;",
        f"    FUSEDOPT_APPLY(P, G, S, MODE, {_count(presences)}, "
        f"fusedopt::{family}Rule<C, {', '.join(flags)}>);",
        "}",
        "",
    ]
    return "\n".join(out)


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


def generated(specs=None) -> dict[str, str]:
    """Every generated file of kernels/ (for ``specs``, default every registered optimizer),
    by name -> its text."""
    if specs is None:
        from ...algorithms.registry import REGISTRY
        specs = REGISTRY.values()
    files = {HEADER: constants_source()}
    for spec in specs:
        text = rule_source(spec)
        name = f"{spec.kernel}.cu"
        if files.setdefault(name, text) != text:
            raise RuleError(f"two optimizers of family {spec.kernel} declare different rules")
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
