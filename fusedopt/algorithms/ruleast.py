"""An element rule as Python's ``ast``, with the rule language's helpers
(fusedopt/algorithms/rulelib.py) inlined from their source: what both backends build from
(the CPU's element function, fusedopt/backends/cpu/rules.py; the CUDA rule,
fusedopt/backends/cuda/translate.py)."""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap

from . import rulelib


class RuleError(ValueError):
    """A rule outside the language the translator (and the CPU loop) accepts."""


def function(fn) -> ast.FunctionDef:
    """``fn``'s definition as read from its source file. Raises when the file no longer
    holds it where it was when imported (edited since): the rule compiled would not be the
    rule the module runs."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    params = tuple(a.arg for a in node.args.args) if isinstance(node, ast.FunctionDef) else ()
    if not isinstance(node, ast.FunctionDef) or node.name != fn.__name__ \
            or params != fn.__code__.co_varnames[:fn.__code__.co_argcount]:
        raise RuleError(f"the source of {fn.__module__}.{fn.__qualname__} changed since it "
                        "was imported; restart the process to use the edited rule")
    return node


class _Substitute(ast.NodeTransformer):
    def __init__(self, mapping):
        self.mapping = mapping

    def visit_Name(self, node):
        if node.id in self.mapping:
            replacement = copy.deepcopy(self.mapping[node.id])
            if isinstance(replacement, ast.Name):
                replacement.ctx = node.ctx  # an assigned argument stays a target
            return replacement
        return node


def _inline(call_targets, call, where: str) -> list:
    """The statements of helper ``call`` (an ``ast.Call`` of a rulelib helper) with its
    arguments substituted, assigning its returned tuple to ``call_targets``."""
    name = call.func.id
    helper = function(rulelib.HELPERS[name])
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


def expand(statements, where: str) -> list:
    """``statements`` with every helper call inlined (recursively into ``if`` blocks)."""
    out = []
    for node in statements:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Name) \
                and node.value.func.id in rulelib.HELPERS:
            target = node.targets[0]
            targets = target.elts if isinstance(target, ast.Tuple) else [target]
            out += expand(_inline(targets, node.value, where), where)
        elif isinstance(node, ast.If):
            node.body = expand(node.body, where)
            node.orelse = expand(node.orelse, where)
            out.append(node)
        else:
            out.append(node)
    return out
