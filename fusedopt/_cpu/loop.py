"""The one parallel loop every CPU optimizer runs through.

It walks the same launch table as the CUDA kernels (fusedopt/_table.py): each work item is
one chunk of one tensor, and Numba's threads share out the work items, so one huge tensor
and two hundred tiny ones both keep every core busy. Per chunk it hands plain array slices
to a non-parallel inner loop that calls the optimizer's scalar rule per element; with
slices (not raw pointers) LLVM vectorizes the rule.

Gradient clipping (fusedopt/_clip.py) happens here, not in the rules: when the table gives
a chunk's tensor a grad scale other than 1 or a finite limit, the chunk's grads are first
written clipped into a chunk-sized buffer (it stays in cache) and the rule reads that.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit, prange, types
from numba.core.extending import intrinsic

from ._cache import JIT_OPTIONS


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s element type."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@functools.lru_cache(maxsize=None)
def specialize(rule, flags: tuple[int, ...]):
    """``rule`` with its variant ``flags`` frozen in as compile-time constants.

    Numba freezes closure variables, so after inlining LLVM sees constant flags and folds
    the branches on them. That matters: a store guarded by a runtime flag (AMSGrad's vhat,
    a momentum buffer) cannot be if-converted and would keep the loop scalar.
    """

    @njit(inline="always", error_model="numpy")
    def bound(i, p, g, s0, s1, s2, h):
        rule(i, p, g, s0, s1, s2, h, flags)

    return bound


@njit(**JIT_OPTIONS)
def _run_chunk(rule, p, g, s0, s1, s2, h):
    for i in range(p.shape[0]):
        rule(i, p, g, s0, s1, s2, h)


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
def run(rule, table, n_tensors, n_slots, chunk, param_like, state_like, h):
    """Apply ``rule`` (a :func:`specialize`\ d rule) to every element of every tensor in
    ``table``. ``param_like``/``state_like`` are empty arrays of the param and state dtypes
    (they type the pointers); ``h`` is the tuple of scalars in the compute type.
    """
    work0 = (5 + n_slots) * n_tensors
    sizes0 = (2 + n_slots) * n_tensors
    scales = table[(3 + n_slots) * n_tensors: (4 + n_slots) * n_tensors].view(np.float64)
    limits = table[(4 + n_slots) * n_tensors: work0].view(np.float64)
    unused = state_like[:0]
    for w in prange(table.shape[0] - work0):
        item = table[work0 + w]
        t = item >> 32
        n = table[sizes0 + t]
        begin = (item & 0xFFFFFFFF) * chunk
        end = min(begin + chunk, n)
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
            _run_chunk(rule, p, _clip_chunk(g, scales[t], limits[t]), s0, s1, s2, h)
        else:
            _run_chunk(rule, p, g, s0, s1, s2, h)
