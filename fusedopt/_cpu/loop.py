"""The one loop every CPU optimizer runs through.

It walks the same launch table as the CUDA kernels (fusedopt/_table.py). Numba's threads
share out the work items, so one huge tensor and two hundred tiny ones both keep every core
busy. A CPU work item runs from its own start, ``(tensor, chunk)``, up to the next item's
start (or the end of the table), crossing into following tensors when the next item starts
in a later one: with one item per chunk that is exactly a CUDA block's range, and with the
packed tables of fusedopt/_table.py one item covers several small tensors. Per tensor it
hands plain array slices to a non-parallel inner loop that calls the optimizer's scalar
rule per element; with slices (not raw pointers) LLVM vectorizes the rule.

The rule and its flags reach the loop as a :class:`Variant`, whose Numba type carries both,
as the CUDA kernels take them as template arguments. So the flags are constants in the
compiled loop and LLVM drops the other variants' branches (with runtime flags, a branch
storing to another slot stayed in the loop and kept it scalar), and the call does not pay
for passing a jitted function as an argument (more than a small step's arithmetic).

Gradient clipping (fusedopt/_clip.py) happens here, not in the rules: when the table gives
a tensor a grad scale other than 1 or a finite limit, each of its spans' grads is first
written clipped into a span-sized buffer (it stays in cache) and the rule reads that.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit, prange, types
from numba.core.extending import (NativeValue, intrinsic, models, overload, register_model,
                                  typeof_impl, unbox)

from ._cache import JIT_OPTIONS

_CHUNK_MASK = 0xFFFFFFFF

#: rule name -> rule, for the Numba type of a Variant (which names its rule, so that the
#: type pickles the same in every process and Numba's on-disk cache finds it).
_RULES: dict = {}


def _rule_name(rule) -> str:
    return f"{rule.py_func.__module__}.{rule.py_func.__qualname__}"


class VariantType(types.Opaque):
    def __init__(self, rule: str, flags: tuple):
        self.rule, self.flags = rule, flags
        super().__init__(name=f"Variant({rule}, {flags})")

    @property
    def key(self):
        return self.rule, self.flags


register_model(VariantType)(models.OpaqueModel)


class Variant:
    """An optimizer rule with its variant flags, as one compile-time argument."""

    def __init__(self, rule, flags):
        name = _rule_name(rule)
        if _RULES.setdefault(name, rule) is not rule:  # e.g. two closures of one factory
            name = f"{name}#{id(rule)}"
            _RULES[name] = rule
        self.flags = tuple(int(f) for f in flags)
        # Numba's dispatcher reads ``_numba_type_`` before any other typing: the fast path.
        self._numba_type_ = VariantType(name, self.flags)


@functools.lru_cache(maxsize=None)
def specialize(rule, flags: tuple) -> Variant:
    """``rule`` with its variant ``flags`` frozen in: what :func:`run` takes."""
    return Variant(rule, flags)


@typeof_impl.register(Variant)
def _typeof_variant(value, context):
    return value._numba_type_


@unbox(VariantType)
def _unbox_variant(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def _apply(variant, i, p, g, s0, s1, s2, h):
    """Element ``i`` through the variant's rule (resolved when the loop is compiled)."""


@overload(_apply, inline="always")
def _apply_variant(variant, i, p, g, s0, s1, s2, h):
    # The rule and flags become free variables of the inlined body: constants to Numba, so
    # the rule is inlined too and LLVM folds the branches on the flags.
    rule, flags = _RULES[variant.rule], variant.flags

    def body(variant, i, p, g, s0, s1, s2, h):
        rule(i, p, g, s0, s1, s2, h, flags)

    return body


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s element type."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def _narrow(typingctx, values, like):
    """The tuple of numbers ``values`` converted to ``like``'s element type.

    The same rounding as ``np.float32(x)`` on the host (round to nearest), done inside the
    compiled call so the caller can pass the scalars as the Python floats it computed.
    """
    target = like.dtype
    sig = types.UniTuple(target, len(values))(values, like)

    def codegen(context, builder, signature, args):
        items = [context.cast(builder, builder.extract_value(args[0], k), values[k], target)
                 for k in range(len(values))]
        return context.make_tuple(builder, signature.return_type, items)

    return sig, codegen


@njit(**JIT_OPTIONS)
def _run_span(variant, p, g, s0, s1, s2, h):
    for i in range(p.shape[0]):
        _apply(variant, i, p, g, s0, s1, s2, h)


@njit(**JIT_OPTIONS)
def _run_item(variant, table, w, n_work, n_tensors, n_slots, chunk, param_like, state_like, h):
    """Work item ``w``: from its start up to the next item's start."""
    work0 = (5 + n_slots) * n_tensors
    sizes0 = (2 + n_slots) * n_tensors
    scales = table[(3 + n_slots) * n_tensors: (4 + n_slots) * n_tensors].view(np.float64)
    limits = table[(4 + n_slots) * n_tensors: work0].view(np.float64)
    # A slot the variant does not use still needs an array; one made from a pointer has no
    # reference count, so passing it costs no atomic updates.
    unused = carray(_pointer(table[0], state_like), 0)
    item = table[work0 + w]
    t = item >> 32
    begin = (item & _CHUNK_MASK) * chunk
    t_stop = n_tensors
    stop = 0
    if w + 1 < n_work:
        after = table[work0 + w + 1]
        t_stop = after >> 32
        stop = (after & _CHUNK_MASK) * chunk
    while t < t_stop or (t == t_stop and begin < stop):
        n = table[sizes0 + t]
        end = n if t < t_stop else stop
        if end > begin:
            p = carray(_pointer(table[t], param_like), n)[begin:end]
            g = carray(_pointer(table[n_tensors + t], param_like), n)[begin:end]
            s0 = unused
            s1 = unused
            s2 = unused
            if n_slots > 0:
                s0 = carray(_pointer(table[2 * n_tensors + t], state_like), n)[begin:end]
            if n_slots > 1:
                s1 = carray(_pointer(table[3 * n_tensors + t], state_like), n)[begin:end]
            if n_slots > 2:
                s2 = carray(_pointer(table[4 * n_tensors + t], state_like), n)[begin:end]
            if scales[t] != 1.0 or limits[t] != np.inf:
                g = _clip_chunk(g, scales[t], limits[t])
            _run_span(variant, p, g, s0, s1, s2, h)
        t += 1
        begin = 0


@njit(**JIT_OPTIONS)
def _clip_chunk(g, scale, limit):
    """clamp(g * scale, -limit, limit) in g's dtype; comparisons let a NaN through."""
    out = np.empty_like(g)
    cast = np.empty(2, g.dtype)  # the float64 table values in the compute type, as CUDA
    cast[0] = scale
    cast[1] = limit
    s, c = cast[0], cast[1]
    for i in range(g.shape[0]):
        x = g[i] * s
        out[i] = c if x > c else (-c if x < -c else x)
    return out


@njit(parallel=True, **JIT_OPTIONS)
def run(variant, table, n_tensors, n_slots, chunk, param_like, state_like, scalars):
    """Apply ``variant``'s rule to every element of every tensor in ``table``.

    ``param_like``/``state_like`` are empty arrays of the param and state dtypes (they type
    the pointers); ``scalars`` the kernel's scalars as numbers (rounded to the state dtype
    inside).
    """
    h = _narrow(scalars, state_like)
    n_work = table.shape[0] - (5 + n_slots) * n_tensors
    for w in prange(n_work):
        _run_item(variant, table, w, n_work, n_tensors, n_slots, chunk, param_like,
                  state_like, h)


@njit(**JIT_OPTIONS)
def run_serial(variant, table, n_tensors, n_slots, chunk, param_like, state_like, scalars):
    """:func:`run` on the calling thread, for tables of one work item (waking the thread
    pool would cost more than the work)."""
    h = _narrow(scalars, state_like)
    n_work = table.shape[0] - (5 + n_slots) * n_tensors
    for w in range(n_work):
        _run_item(variant, table, w, n_work, n_tensors, n_slots, chunk, param_like,
                  state_like, h)
