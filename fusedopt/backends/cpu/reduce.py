"""Per-tensor reductions on the CPU: a reduction rule (an optimizer's ``reductions``, or the
grad pre-pass's, fusedopt/algorithms/gradsums.py) summed over every tensor of a group, in
one parallel read.

It walks the update loop's launch table, one task per chunk (unpacked, whatever the update
loop's packing): each element is loaded as the update loop loads it (widened; the grad
clamp(g * scale, -limit, limit) with the table's scale and limit; the param through its
mode: a master, a remainder, a Kahan compensation), the rule gives its terms in the
compute type, and each task adds them in float64 into its own slot; the chunks of a tensor
are then added in a fixed order (:func:`per_tensor`), so no sum depends on how threads were
scheduled. Nothing is written: the state the update pass reads afterwards is the state the
terms were made from. The grad pre-pass's rule (``grads_as_stored``) gets a loop of its
own that loads the grads alone, widened to float64 and not clipped: no param or state
address is even formed.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit, prange
from numba.core.extending import overload

from ... import config
from ...algorithms.spec import MAX_REDUCTIONS
from ...constants import MAX_SLOTS
from ...memory.table import rows, work_items
from . import storage
from ._cache import JIT_OPTIONS
from .codes import FORMAT_OF, block_functions
from .element import _param_io, _pointer
from .rules import inlined, reduction_rule
from .spec_variant import SpecVariant, compute_zero, spec_of
from .storage import bits_float
from .variant import WITH_SLOT, loop_dtypes, specialize

#: Elements whose terms are summed together (then added to the task's running sums).
BLOCK = 1024
# The kernels below carry two accumulators and four slots.
assert MAX_REDUCTIONS == 2 and MAX_SLOTS == 4, "reduce.py carries 2 sums and 4 slots"


@njit(fastmath=set(config.NORM_FASTMATH), **JIT_OPTIONS)
def _block_sums(terms_a, terms_b, n):
    """The sums of the first ``n`` of each array, in float64. May reassociate
    (config.NORM_FASTMATH): an order fixed at compile time, so a build
    gives the same sums every run; the rule's own arithmetic, in the caller, keeps IEEE
    order, so its terms are the element pass's values."""
    sa = 0.0
    sb = 0.0
    for i in range(n):
        sa += np.float64(terms_a[i])
        sb += np.float64(terms_b[i])
    return sa, sb


# --- the kernels, compiled once per variant (fusedopt/backends/cpu/spec_variant.py) ----------

@functools.lru_cache(maxsize=None)
def _parts(variant):
    """(terms, get_p, load_g, load_s, slots, master, decode) of ``variant`` (a SpecType):
    what the kernels below read through it. ``decode``: for quantized state, the element
    loop's decoding of a code (fusedopt/backends/cpu/codes.py), None for float state."""
    spec, flags = spec_of(variant), variant.flags
    pcode, gcode, scode = variant.codes
    decode = None
    if scode in storage.QUANTIZED:  # the loop variant's maps, one per slot
        decode = block_functions(specialize(spec, flags, variant.codes,
                                            variant.mode)._numba_type_)[0]
    return (inlined(reduction_rule(spec, flags)), _param_io(variant.mode, pcode)[0],
            storage.load(gcode), None if decode else storage.load(scode),
            len(spec.slots(flags)), variant.mode in WITH_SLOT, decode)


def _terms(variant, p, g, s0, s1, s2, s3, k):
    """The variant's reduction terms of one element."""


def _grad(variant, x):
    """A stored grad, widened to the compute type."""


def _param(variant, pv, xv):
    """The param's compute value from its stored element and its master-slot element."""


def _slot_run(variant, s, start, stop):
    """What :func:`_slot` reads elements ``start`` .. ``stop`` of a slot from: its float
    elements there, or (quantized) its whole buffer of blocks."""


def _slot(variant, j, run, start, i):
    """Element ``start + i`` of slot ``j`` of a tensor from ``run`` (:func:`_slot_run`):
    the stored float, or ``map[code] * absmax`` (fusedopt/memory/quant.py)."""


def _compute(variant, x):
    """``x`` in the variant's compute type."""


def _shape(variant):
    """(the rule's slots, whether a master-slot follows them): constants of the variant."""


def _master_zero(variant):
    """0 in the dtype of the variant's master-slot element (for a variant without one)."""


def _slot_length(variant, n):
    """The length of a slot's array for a tensor of ``n`` elements (bytes when quantized)."""


@overload(_terms, inline="always")
def _terms_impl(variant, p, g, s0, s1, s2, s3, k):
    terms, zero = _parts(variant)[0], compute_zero(variant)
    return lambda variant, p, g, s0, s1, s2, s3, k: terms(p, g, s0, s1, s2, s3, zero, k)


@overload(_grad, inline="always")
def _grad_impl(variant, x):
    load_g = _parts(variant)[2]
    return lambda variant, x: load_g(x)


@overload(_param, inline="always")
def _param_impl(variant, pv, xv):
    get_p = _parts(variant)[1]
    return lambda variant, pv, xv: get_p(pv, xv)


@overload(_slot_run, inline="always")
def _slot_run_impl(variant, s, start, stop):
    if _parts(variant)[6]:
        return lambda variant, s, start, stop: s
    return lambda variant, s, start, stop: s[start:stop]


@overload(_slot, inline="always")
def _slot_impl(variant, j, run, start, i):
    load_s, decode = _parts(variant)[3], _parts(variant)[6]
    if decode is None:
        return lambda variant, j, run, start, i: load_s(run[i])
    fmt = FORMAT_OF[variant.codes[2]]
    block, record = fmt.block, fmt.record

    def impl(variant, j, run, start, i):
        e = start + i
        b = e // block
        base = b * record  # the block's record: its absmax (little-endian), then its codes
        scale = bits_float(np.uint32(run[base]) | (np.uint32(run[base + 1]) << np.uint32(8))
                           | (np.uint32(run[base + 2]) << np.uint32(16))
                           | (np.uint32(run[base + 3]) << np.uint32(24)))
        return decode(j, run[base + 4:], e - b * block, scale)
    return impl


@overload(_compute, inline="always")
def _compute_impl(variant, x):
    kind = type(compute_zero(variant))
    return lambda variant, x: kind(x)


@overload(_shape, inline="always")
def _shape_impl(variant):
    shape = _parts(variant)[4:6]
    return lambda variant: shape


@overload(_master_zero, inline="always")
def _master_zero_impl(variant):
    zero = loop_dtypes(variant.codes, variant.mode)[3](0)
    return lambda variant: zero


@overload(_slot_length, inline="always")
def _slot_length_impl(variant, n):
    scode = variant.codes[2]
    if scode not in storage.QUANTIZED:
        return lambda variant, n: n
    fmt = FORMAT_OF[scode]  # Format.nbytes: an absmax a block, then the codes
    block, per_byte = fmt.block, fmt.codes_per_byte
    return lambda variant, n: 4 * ((n + block - 1) // block) + (n + per_byte - 1) // per_byte


@njit(inline="always", **JIT_OPTIONS)
def _item(table, item, sizes0, chunk):
    """(tensor, its elements, first and stop element) of work item ``item`` of a table."""
    t = item >> 32
    n = table[sizes0 + t]
    begin = (item & 0xFFFFFFFF) * chunk
    return t, n, begin, min(begin + chunk, n)


@njit(fastmath=set(config.NORM_FASTMATH), **JIT_OPTIONS)
def _stored_span_sums(variant, g):
    """Sums of a rule of the grads as stored (``grads_as_stored``) over ``g``: each grad
    widened to float64, neither scaled nor clipped, the only operand read. Summed as the
    terms are made, in a loop that may reassociate and contract (config.NORM_FASTMATH):
    g - g is 0 or NaN in any order, and the square of a float32 or 16-bit grad is exact in
    float64 (a float64 grad's may be fused into its sum, rounded once); the sums come out
    as the pre-pass has always formed them."""
    a = 0.0
    b = 0.0
    zero = np.float64(0)
    for i in range(g.shape[0]):
        # No scalars (the rule reads only g): ``zero`` stands for k as for p and s.
        ta, tb = _terms(variant, zero, np.float64(_grad(variant, g[i])), zero, zero, zero,
                        zero, zero)
        a += ta
        b += tb
    return a, b


@njit(parallel=True, **JIT_OPTIONS)
def _stored_chunks(variant, table, items, n_tensors, table_slots, chunk, g_like):
    sizes0 = (2 + table_slots) * n_tensors
    # Every entry is written below (np.zeros would be a parallel loop of its own).
    out = np.empty((MAX_REDUCTIONS, items.shape[0]), np.float64)
    for w in prange(items.shape[0]):
        t, n, begin, end = _item(table, items[w], sizes0, chunk)
        g = carray(_pointer(table[n_tensors + t], g_like), n)[begin:end]
        out[0, w], out[1, w] = _stored_span_sums(variant, g)
    return out


@njit(parallel=True, **JIT_OPTIONS)
def _chunks(variant, table, items, n_tensors, table_slots, chunk, k, p_like, g_like, s_like,
            x_like):
    ns, master = _shape(variant)  # constants of the variant: LLVM drops the absent slots
    sizes0 = (2 + table_slots) * n_tensors
    scales = table[(3 + table_slots) * n_tensors: (4 + table_slots) * n_tensors]
    limits = table[(4 + table_slots) * n_tensors: (5 + table_slots) * n_tensors]
    scales, limits = scales.view(np.float64), limits.view(np.float64)
    zero = _compute(variant, 0.0)
    x_none = _master_zero(variant)
    # Every entry is written below (np.zeros would be a parallel loop of its own).
    out = np.empty((MAX_REDUCTIONS, items.shape[0]), np.float64)
    for w in prange(items.shape[0]):
        t, n, begin, end = _item(table, items[w], sizes0, chunk)
        slot_n = _slot_length(variant, n)
        p = carray(_pointer(table[t], p_like), n)
        g = carray(_pointer(table[n_tensors + t], g_like), n)
        s0 = carray(_pointer(table[2 * n_tensors + t] if ns > 0 else 0, s_like),
                    slot_n if ns > 0 else 0)
        s1 = carray(_pointer(table[3 * n_tensors + t] if ns > 1 else 0, s_like),
                    slot_n if ns > 1 else 0)
        s2 = carray(_pointer(table[4 * n_tensors + t] if ns > 2 else 0, s_like),
                    slot_n if ns > 2 else 0)
        s3 = carray(_pointer(table[5 * n_tensors + t] if ns > 3 else 0, s_like),
                    slot_n if ns > 3 else 0)
        x = carray(_pointer(table[(2 + ns) * n_tensors + t] if master else 0, x_like),
                   n if master else 0)
        scale, limit = _compute(variant, scales[t]), _compute(variant, limits[t])
        low = -limit
        # The terms in the compute type, widened as they are summed (exactly: float32 to
        # float64): the terms loop then runs at the compute type's vector width.
        terms_a = np.empty(BLOCK, type(zero))
        terms_b = np.empty(BLOCK, type(zero))
        a = 0.0
        b = 0.0
        for start in range(begin, end, BLOCK):
            stop = min(start + BLOCK, end)
            # The block's elements from 0: every index is known to be >= 0, so no
            # wraparound of negative indices (per-lane gathers): plain vector loads.
            pb, gb, xb = p[start:stop], g[start:stop], x[start:stop]
            b0, b1 = _slot_run(variant, s0, start, stop), _slot_run(variant, s1, start, stop)
            b2, b3 = _slot_run(variant, s2, start, stop), _slot_run(variant, s3, start, stop)
            # Each element's terms (no dependence between elements: vectorized), then
            # their sums (a separate function that may reassociate: see _block_sums).
            for i in range(stop - start):
                scaled = _grad(variant, gb[i]) * scale
                above = low if low > scaled else scaled
                gi = limit if limit < above else above
                pi = _param(variant, pb[i], xb[i] if master else x_none)
                ta, tb = _terms(variant, pi, gi,
                                _slot(variant, 0, b0, start, i) if ns > 0 else zero,
                                _slot(variant, 1, b1, start, i) if ns > 1 else zero,
                                _slot(variant, 2, b2, start, i) if ns > 2 else zero,
                                _slot(variant, 3, b3, start, i) if ns > 3 else zero, k)
                terms_a[i] = ta
                terms_b[i] = tb
            da, db = _block_sums(terms_a, terms_b, stop - start)
            a += da
            b += db
        out[0, w] = a
        out[1, w] = b
    return out


@functools.lru_cache(maxsize=None)
def _kernel(spec, flags: tuple, codes: tuple, mode: int):
    """(variant, likes): what :func:`_chunks` (or, for a rule of the grads as stored,
    :func:`_stored_chunks`) takes besides the table, for ``spec``'s reduction of variant
    ``flags`` on storage ``codes`` in ``mode``."""
    variant = SpecVariant(spec, flags, codes, mode)
    if spec.reductions.grads_as_stored:
        return variant, (np.empty(0, storage.LOOP_DTYPES[codes[1]]),)
    p_dtype, _, s_dtype, x_dtype, _ = loop_dtypes(codes, mode)
    if codes[2] in storage.QUANTIZED:
        s_dtype = np.uint8
    likes = (np.empty(0, p_dtype), np.empty(0, storage.LOOP_DTYPES[codes[1]]),
             np.empty(0, s_dtype), np.empty(0, x_dtype))
    return variant, likes


def stored_sums(spec, flags: tuple, grad_code: int, table: np.ndarray, n_tensors: int,
                table_slots: int, chunk: int) -> np.ndarray:
    """:func:`tensor_sums` of a rule of the grads as stored (``grads_as_stored``: the grad
    pre-pass), grads of storage code ``grad_code``: no scalars, nothing but the grads
    read."""
    start = rows(table_slots, n_tensors)["sizes"]
    items = work_items(table[start: start + n_tensors], chunk)
    return per_tensor(stored_partial(spec, flags, grad_code, table, items, n_tensors,
                                     table_slots, chunk), items, n_tensors)


def stored_partial(spec, flags: tuple, grad_code: int, table: np.ndarray, items: np.ndarray,
                   n_tensors: int, table_slots: int, chunk: int) -> np.ndarray:
    """(MAX_REDUCTIONS, items) float64: the chunk sums of :func:`stored_sums`, one column
    per work item of ``items``, before they are added per tensor."""
    variant, likes = _kernel(spec, tuple(flags), (grad_code,) * 3, 0)
    return _stored_chunks(variant, table, items, n_tensors, table_slots, chunk, *likes)


def tensor_sums(spec, flags: tuple, codes: tuple, mode: int, table: np.ndarray,
                n_tensors: int, table_slots: int, chunk: int, k) -> np.ndarray:
    """(MAX_REDUCTIONS, n_tensors) float64: each tensor's sums of the reduction's terms
    (0 for an empty tensor). ``k``: the rule's scalars as its named tuple, in the compute
    type."""
    start = rows(table_slots, n_tensors)["sizes"]
    items = work_items(table[start: start + n_tensors], chunk)
    variant, likes = _kernel(spec, tuple(flags), tuple(codes), int(mode))
    partial = _chunks(variant, table, items, n_tensors, table_slots, chunk, k, *likes)
    return per_tensor(partial, items, n_tensors)


def per_tensor(partial: np.ndarray, items: np.ndarray, n_tensors: int) -> np.ndarray:
    """Each row of ``partial`` (one column per chunk of ``items``) summed per tensor, the
    chunks of a tensor added in their order (0 for a tensor without chunks): every
    reduction of the CPU backend ends here, so none depends on how threads were
    scheduled."""
    out = np.zeros((partial.shape[0], n_tensors), np.float64)
    if items.size:
        tensors = items >> 32
        starts = np.flatnonzero(np.r_[True, tensors[1:] != tensors[:-1]])
        out[:, tensors[starts]] = np.add.reduceat(partial, starts, axis=1)
    return out
