"""The rule language translated to C++: Python's ``ast`` of an element rule
(fusedopt/algorithms/rulelib.py says the language) to the body of a CUDA rule's
``operator()``, statement for statement, keeping Python's grouping of every expression.
Helpers of rulelib are inlined from their Python source. fusedopt/backends/cuda/codegen.py
makes the files."""

from __future__ import annotations

import ast

from ... import constants
from ...algorithms import rulelib
from ...algorithms.ruleast import RuleError, expand, function  # noqa: F401

_RESERVED = {"k", "s", "spare", "C", "P", "G", "S", "MODE", "auto", "int", "float", "double",
             "const", "return", "if", "else", "for", "while", "struct", "template", "class",
             "new", "delete", "this", "register", "signed", "unsigned", "short", "long", "char",
             "default", "switch", "case", "break", "continue", "goto", "static", "volatile"}


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


# --- expressions -------------------------------------------------------------------------

_BINARY = {ast.Add: ("+", 6), ast.Sub: ("-", 6), ast.Mult: ("*", 7), ast.Div: ("/", 7)}
_COMPARE = {ast.Lt: "<", ast.Gt: ">", ast.LtE: "<=", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_ATOM = 9


class _Rule:
    """One rule's translation state: what its names mean in C++."""

    def __init__(self, spec, where: str):
        self.spec, self.where = spec, where
        self.flags = set(spec.flag_names)
        self.scalars = set(spec.row_names)  # the step's, then any per-tensor ones
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
                                    f"(its scalars: {', '.join(self.spec.row_names)})")
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
            arity = rulelib.ARITY.get(name, 1)
            if name in rulelib.BUILTINS and len(node.args) == arity and not node.keywords:
                if name == "power":  # in the compute type, both arguments: powf for float
                    x, y = (self.expression(a) for a in node.args)
                    return f"pow(C({x}), C({y}))", _ATOM
                arguments = ", ".join(self.expression(a) for a in node.args)
                return f"{rulelib.BUILTINS[name]}({arguments})", _ATOM
            if name in rulelib.BUILTINS:
                self.fail(node, f"{name}() takes {arity} argument{'s' * (arity > 1)}, "
                                "positionally")
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
