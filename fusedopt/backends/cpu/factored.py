"""Factored second moments on the CPU (Adafactor: ``factored`` in
fusedopt/algorithms/spec.py): the factor pass, the reduction pass and the element pass of a
tensor whose state is a row factor and a column factor (rank >= 2), or a whole second
moment (rank < 2).

A factored tensor is seen as slices (B, R, C) and its passes run parallel over its B * R
rows: element (b, i, j) reads its row factor r[b R + i], its column factor c[b C + j] and
its slice's denominator m[b]. The factor pass sums ``square`` of each grad along its row
(one sum per row) and along its columns (each block of rows into its own partial sums,
the blocks then added in their order), in float64, so no sum depends on threads; the
factors, R + C values a slice, are then moved on the host. A tensor of rank < 2 is cut
into chunks of ``config.CPU_CHUNK`` elements, its moment moved element by element in both
later passes (recomputed in the reduction pass, stored by the element pass).

The element and reduction rules are the algorithm's own (fusedopt/backends/cpu/rules.py),
given each element's second-moment estimate as their ``full`` argument. Storage: the
param's dtype for grads and state, no master or rounding mode (the engine's checks say so
before a step). One Numba call per tensor and pass.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from numba import carray, njit, prange
from numba.core.extending import overload

from ... import config
from ...constants import PLAIN
from ...memory import factored as _factored
from ...memory.arrays import kind_of
from . import storage
from ._cache import JIT_OPTIONS
from .address import address
from .element import _pointer
from .reduce import BLOCK, _block_sums
from .rules import element_rule, inlined, reduction_rule
from .spec_variant import SpecVariant, compute_zero, spec_of

_INLINE = {"inline": "always", "error_model": "numpy"}


def host_view(address: int, n: int, dtype) -> np.ndarray:
    """A NumPy array over ``n`` elements of ``dtype`` at ``address`` (host memory)."""
    dtype = np.dtype(dtype)
    if n == 0:
        return np.empty(0, dtype)
    buffer = (ctypes.c_char * (n * dtype.itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype)


# --- the passes, compiled once per variant (fusedopt/backends/cpu/spec_variant.py) -----------

@functools.lru_cache(maxsize=None)
def _rules(variant):
    """(square, moment, estimate, update, terms, f) of ``variant`` (a SpecType), jitted to
    inline."""
    spec, flags = spec_of(variant), variant.flags
    declared = spec.factored
    return (*(njit(**_INLINE)(fn) for fn in (declared.square, declared.moment,
                                              declared.estimate)),
            inlined(element_rule(spec, flags)), inlined(reduction_rule(spec, flags)),
            spec.named_flags(flags))


def _square(variant, x, k):
    """``square`` of the variant's rule."""


def _update(variant, p, g, v, k):
    """The variant's element rule on a param, grad and second-moment estimate."""


def _terms(variant, p, g, v, k):
    """The variant's reduction terms of a param, grad and second-moment estimate."""


def _second_moment(variant, factored, r, c, m, v, index, row, col, b, gi, k):
    """The element's second moment: from its factors, or moved (an unfactored tensor)."""


@overload(_square, inline="always")
def _square_impl(variant, x, k):
    square, _, _, _, _, f = _rules(variant)
    return lambda variant, x, k: square(x, k, f)


@overload(_update, inline="always")
def _update_impl(variant, p, g, v, k):
    update, zero = _rules(variant)[3], compute_zero(variant)
    return lambda variant, p, g, v, k: update(p, g, zero, zero, v, zero, zero, k)


@overload(_terms, inline="always")
def _terms_impl(variant, p, g, v, k):
    terms, zero = _rules(variant)[4], compute_zero(variant)
    return lambda variant, p, g, v, k: terms(p, g, zero, zero, v, zero, zero, k)


@overload(_second_moment, inline="always")
def _second_moment_impl(variant, factored, r, c, m, v, index, row, col, b, gi, k):
    square, moment, estimate, _, _, f = _rules(variant)

    def impl(variant, factored, r, c, m, v, index, row, col, b, gi, k):
        if factored:
            return estimate(r[row], c[col], m[b], k, f)
        return moment(v[index], square(gi, k, f), k, f)
    return impl


@njit(**_INLINE)
def _clipped(x, scale, limit):
    scaled = x * scale
    above = -limit if -limit > scaled else scaled
    return limit if limit < above else above


@njit(fastmath={"reassoc"}, parallel=True, **JIT_OPTIONS)
def _factor_sums(variant, g_addr, like, B, R, C, rb, scale, limit, k, rows, cols):
    """Row sums (B R) and column sums (B C) of ``square`` of the clipped grads."""
    g = carray(_pointer(g_addr, like), B * R * C)
    blocks = (R + rb - 1) // rb
    partial = np.zeros((B * blocks, C), np.float64)
    for item in prange(B * blocks):
        b, blk = item // blocks, item % blocks
        for i in range(blk * rb, min(R, blk * rb + rb)):
            base = (b * R + i) * C
            s = 0.0
            for j in range(C):
                t = np.float64(_square(variant, _clipped(g[base + j], scale, limit), k))
                s += t
                partial[item, j] += t
            rows[b * R + i] = s
    for b in prange(B):
        for blk in range(blocks):
            for j in range(C):
                cols[b * C + j] += partial[b * blocks + blk, j]


@njit(**_INLINE)
def _operands(p_addr, g_addr, r_addr, c_addr, v_addr, like, factored, n, B, R, C, chunk):
    """A tensor's param, grad, row and column factors (factored) or full moment (not), and
    its work items: a row each (factored), or a chunk each."""
    return (carray(_pointer(p_addr, like), n), carray(_pointer(g_addr, like), n),
            carray(_pointer(r_addr, like), B * R if factored else 0),
            carray(_pointer(c_addr, like), B * C if factored else 0),
            carray(_pointer(v_addr, like), 0 if factored else n),
            B * R if factored else (n + chunk - 1) // chunk)


@njit(parallel=True, **JIT_OPTIONS)
def _reduce_pass(variant, p_addr, g_addr, r_addr, c_addr, v_addr, like, factored, n, B, R,
                 C, chunk, m, scale, limit, k):
    """Each row's (or chunk's) float64 sums of the reduction terms."""
    p, g, r, c, v, items = _operands(p_addr, g_addr, r_addr, c_addr, v_addr, like, factored,
                                     n, B, R, C, chunk)
    out = np.zeros((2, items), np.float64)
    for item in prange(items):
        start = item * C if factored else item * chunk
        stop = start + C if factored else min(n, start + chunk)
        b = item // R if factored else 0
        terms_a = np.empty(BLOCK, np.float64)
        terms_b = np.empty(BLOCK, np.float64)
        sa = 0.0
        sb = 0.0
        for lo in range(start, stop, BLOCK):
            hi = min(lo + BLOCK, stop)
            for i in range(lo, hi):
                gi = _clipped(g[i], scale, limit)
                vi = _second_moment(variant, factored, r, c, m, v, i, item,
                                    b * C + (i - start), b, gi, k)
                ta, tb = _terms(variant, p[i], gi, vi, k)
                terms_a[i - lo] = np.float64(ta)
                terms_b[i - lo] = np.float64(tb)
            da, db = _block_sums(terms_a, terms_b, hi - lo)
            sa += da
            sb += db
        out[0, item] = sa
        out[1, item] = sb
    return out


@njit(parallel=True, **JIT_OPTIONS)
def _element_pass(variant, p_addr, g_addr, r_addr, c_addr, v_addr, like, factored, n, B, R,
                  C, chunk, m, scale, limit, k):
    p, g, r, c, v, items = _operands(p_addr, g_addr, r_addr, c_addr, v_addr, like, factored,
                                     n, B, R, C, chunk)
    for item in prange(items):
        start = item * C if factored else item * chunk
        stop = start + C if factored else min(n, start + chunk)
        b = item // R if factored else 0
        for i in range(start, stop):
            gi = _clipped(g[i], scale, limit)
            vi = _second_moment(variant, factored, r, c, m, v, i, item, b * C + (i - start),
                                b, gi, k)
            new = _update(variant, p[i], gi, vi, k)
            p[i] = new[0]
            if not factored:
                v[i] = new[3]


@functools.lru_cache(maxsize=None)
def _kernels(spec, flags: tuple, dtype: str):
    """(variant, like, compute): what the three passes take for ``spec``'s ``flags`` on
    params of ``dtype`` (grads and state of the same)."""
    code = storage.CODES[dtype]
    compute = np.float64 if dtype == "float64" else np.float32
    return SpecVariant(spec, flags, (code,) * 3, PLAIN), np.empty(0, compute), compute


def _tensors(spec, flags, group, grads):
    """Per tensor: (param, grad, r, c, v addresses, shape, factored)."""
    names = spec.slots(flags)
    declared = spec.factored
    at = {name: names.index(name) for name in (declared.row, declared.col, declared.full)}
    out = []
    for t, (p, g) in enumerate(zip(group.params, grads)):
        states = group.states[t]
        shape = tuple(kind_of(p).shape(p))
        out.append((address(p), address(g), *(address(states[at[name]]) for name in (
            declared.row, declared.col, declared.full)), shape,
            _factored.is_factored(shape)))
    return out


def _scale(clip, t) -> float:
    if clip.scales is None:
        return 1.0
    return float(clip.scales[t]) if not isinstance(clip.scales, float) else clip.scales


def factor(spec, flags, row: tuple, group, grads, clip, st) -> None:
    """Move the row and column factors of every factored tensor of ``group``; keep each
    slice's denominator in the group's scratch for the passes after."""
    _factored.check_storage(st)
    variant, like, compute = _kernels(spec, tuple(flags), st.param)
    f = spec.named_flags(flags)
    k = spec.Scalars(*(compute(x) for x in row), *(compute(0) for _ in
                                                   spec.reductions.scalar_names))
    k64 = spec.Scalars(*map(float, row), *(0.0 for _ in spec.reductions.scalar_names))
    declared = spec.factored
    denominators = []
    for t, (_, g_addr, r_addr, c_addr, _, shape, is_factored) in enumerate(
            _tensors(spec, flags, group, grads)):
        if not is_factored:
            denominators.append(np.ones(1, compute))
            continue
        B, R, C = _factored.slices(shape)
        if B * R * C == 0:  # no element to read the factors
            denominators.append(np.ones(1, compute))
            continue
        rows = np.zeros(B * R, np.float64)
        cols = np.zeros(B * C, np.float64)
        rb = max(1, min(R, config.CPU_FACTOR_BLOCK // C))
        _factor_sums(variant, g_addr, like, B, R, C, rb, compute(_scale(clip, t)),
                     compute(clip.limit), k, rows, cols)
        r, c = host_view(r_addr, B * R, compute), host_view(c_addr, B * C, compute)
        r[...] = declared.moment(r, (rows / C).astype(compute), k, f)
        c[...] = declared.moment(c, (cols / R).astype(compute), k, f)
        row_mean = r.reshape(B, R).astype(np.float64).mean(axis=1) if R else np.zeros(B)
        denominators.append(np.asarray(declared.denominator(np, row_mean, k64, f))
                            .astype(compute))
    group.scratch["factor_denominators"] = denominators


def _passes(which, spec, flags, rows, group, grads, clip, st):
    _factored.check_storage(st)
    variant, like, compute = _kernels(spec, tuple(flags), st.param)
    kernel = which
    denominators = group.scratch["factor_denominators"]
    for t, (p_addr, g_addr, r_addr, c_addr, v_addr, shape, is_factored) in enumerate(
            _tensors(spec, flags, group, grads)):
        n = int(np.prod(shape, dtype=np.int64))
        B, R, C = _factored.slices(shape) if is_factored else (1, 1, 1)
        k = spec.Scalars(*(compute(x) for x in rows(t)))
        yield t, n, kernel(variant, p_addr, g_addr, r_addr, c_addr, v_addr, like,
                           is_factored, n, B, R, C, config.CPU_CHUNK, denominators[t],
                           compute(_scale(clip, t)), compute(clip.limit), k)


def reduce(spec, flags, row: tuple, group, grads, clip, st) -> np.ndarray:
    """(2, tensors) float64: each tensor's sums of the reduction terms, rows added in
    their order."""
    zeros = (0.0,) * len(spec.reductions.scalar_names)
    out = np.zeros((2, len(group.params)), np.float64)
    for t, n, partial in _passes(_reduce_pass, spec, flags, lambda t: (*row, *zeros), group, grads,
                                 clip, st):
        out[:, t] = partial.sum(axis=1) if n else 0.0
    return out


def step(spec, flags, scalars: np.ndarray, group, grads, clip, st, average=None) -> None:
    """The element pass of every tensor, ``scalars`` a row per tensor; then, for a group
    made with moving averages (its last slot), ``average`` = (momentum, 1 - momentum)
    applied to each, from the new param, as whole arrays."""
    for _ in _passes(_element_pass, spec, flags, lambda t: scalars[t], group, grads, clip, st):
        pass
    if average is None:
        return
    compute = np.dtype(st.compute).type
    keep, take = compute(average[0]), compute(average[1])
    for p, states in zip(group.params, group.states):
        n = int(np.prod(kind_of(p).shape(p), dtype=np.int64))
        a = host_view(address(states[-1]), n, st.param)
        a[...] = keep * a + take * host_view(address(p), n, st.param)
