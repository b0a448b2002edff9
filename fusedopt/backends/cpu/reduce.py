"""Per-tensor reductions on the CPU: an optimizer's reduction rule (its ``reductions``,
fusedopt/algorithms/spec.py) summed over every tensor of a group, in one parallel read.

It walks the update loop's launch table, one task per chunk (unpacked, whatever the update
loop's packing), as the grad pre-pass does (fusedopt/backends/cpu/norm.py): each element is
loaded as the update loop loads it (widened; the grad clamp(g * scale, -limit, limit) with
the table's scale and limit; the param through its mode: a master, a remainder, a Kahan
compensation), the rule gives its terms in the compute type, and each task adds them in
float64 into its own slot; the chunks of a tensor are then added in a fixed order
(``norm.per_tensor``), so no sum depends on how threads were scheduled. Nothing is
written: the state the update pass reads afterwards is the state the terms were made from.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit, prange

from ... import config
from ...algorithms.spec import MAX_REDUCTIONS
from ...constants import MAX_SLOTS
from ...memory.table import rows, work_items
from . import storage
from ._cache import JIT_OPTIONS
from .element import _param_io, _pointer
from .norm import per_tensor
from .rules import inlined, reduction_rule
from .variant import WITH_SLOT, loop_dtypes

#: Elements whose terms are summed together (then added to the task's running sums).
BLOCK = 1024


@njit(fastmath=set(config.NORM_FASTMATH), **JIT_OPTIONS)
def _block_sums(terms_a, terms_b, n):
    """The sums of the first ``n`` of each array, in float64. May reassociate, as the grad
    pre-pass's sums do (config.NORM_FASTMATH): an order fixed at compile time, so a build
    gives the same sums every run; the rule's own arithmetic, in the caller, keeps IEEE
    order, so its terms are the element pass's values."""
    sa = 0.0
    sb = 0.0
    for i in range(n):
        sa += terms_a[i]
        sb += terms_b[i]
    return sa, sb


@functools.lru_cache(maxsize=None)
def _kernel(spec, flags: tuple, codes: tuple, mode: int):
    """The parallel chunk sums of ``spec``'s reduction for variant ``flags`` on storage
    ``codes`` in ``mode``: ``(table, items, n_tensors, table_slots, chunk, k, likes) ->
    (MAX_REDUCTIONS, items) float64``. The rule, storage and mode are constants of it."""
    terms = inlined(reduction_rule(spec, flags))
    ns, master = len(spec.slots(flags)), mode in WITH_SLOT
    pcode, gcode, scode = codes
    get_p = _param_io(mode, pcode)[0]
    load_g, load_s = storage.load(gcode), storage.load(scode)
    p_dtype, _, s_dtype, x_dtype, compute = loop_dtypes(codes, mode)
    zero, x_none = compute(0), x_dtype(0)
    # The two accumulators and four carried slots below.
    assert MAX_REDUCTIONS == 2 and MAX_SLOTS == 4, "reduce.py carries 2 sums and 4 slots"

    def chunks(table, items, n_tensors, table_slots, chunk, k, p_like, g_like, s_like,
               x_like):
        sizes0 = (2 + table_slots) * n_tensors
        scales = table[(3 + table_slots) * n_tensors: (4 + table_slots) * n_tensors]
        limits = table[(4 + table_slots) * n_tensors: (5 + table_slots) * n_tensors]
        scales, limits = scales.view(np.float64), limits.view(np.float64)
        out = np.zeros((MAX_REDUCTIONS, items.shape[0]), np.float64)
        for w in prange(items.shape[0]):
            item = items[w]
            t = item >> 32
            n = table[sizes0 + t]
            begin = (item & 0xFFFFFFFF) * chunk
            end = min(begin + chunk, n)
            p = carray(_pointer(table[t], p_like), n)
            g = carray(_pointer(table[n_tensors + t], g_like), n)
            s0 = carray(_pointer(table[2 * n_tensors + t] if ns > 0 else 0, s_like),
                        n if ns > 0 else 0)
            s1 = carray(_pointer(table[3 * n_tensors + t] if ns > 1 else 0, s_like),
                        n if ns > 1 else 0)
            s2 = carray(_pointer(table[4 * n_tensors + t] if ns > 2 else 0, s_like),
                        n if ns > 2 else 0)
            s3 = carray(_pointer(table[5 * n_tensors + t] if ns > 3 else 0, s_like),
                        n if ns > 3 else 0)
            x = carray(_pointer(table[(2 + ns) * n_tensors + t] if master else 0, x_like),
                       n if master else 0)
            scale, limit = compute(scales[t]), compute(limits[t])
            low = -limit
            terms_a = np.empty(BLOCK, np.float64)
            terms_b = np.empty(BLOCK, np.float64)
            a = 0.0
            b = 0.0
            for start in range(begin, end, BLOCK):
                stop = min(start + BLOCK, end)
                # The block's elements from 0: every index is known to be >= 0, so no
                # wraparound of negative indices (per-lane gathers): plain vector loads.
                pb, gb, xb = p[start:stop], g[start:stop], x[start:stop]
                b0, b1, b2, b3 = s0[start:stop], s1[start:stop], s2[start:stop], s3[start:stop]
                # Each element's terms (no dependence between elements: vectorized), then
                # their sums (a separate function that may reassociate: see _block_sums).
                for i in range(stop - start):
                    scaled = load_g(gb[i]) * scale
                    above = low if low > scaled else scaled
                    gi = limit if limit < above else above
                    pi = get_p(pb[i], xb[i] if master else x_none)
                    ta, tb = terms(pi, gi, load_s(b0[i]) if ns > 0 else zero,
                                   load_s(b1[i]) if ns > 1 else zero,
                                   load_s(b2[i]) if ns > 2 else zero,
                                   load_s(b3[i]) if ns > 3 else zero, zero, k)
                    terms_a[i] = np.float64(ta)
                    terms_b[i] = np.float64(tb)
                da, db = _block_sums(terms_a, terms_b, stop - start)
                a += da
                b += db
            out[0, w] = a
            out[1, w] = b
        return out

    likes = (np.empty(0, p_dtype), np.empty(0, storage.LOOP_DTYPES[gcode]),
             np.empty(0, s_dtype), np.empty(0, x_dtype))
    options = {k: v for k, v in JIT_OPTIONS.items() if k != "cache"}  # a closure: no cache
    return njit(parallel=True, **options)(chunks), likes


def tensor_sums(spec, flags: tuple, codes: tuple, mode: int, table: np.ndarray,
                n_tensors: int, table_slots: int, chunk: int, k) -> np.ndarray:
    """(MAX_REDUCTIONS, n_tensors) float64: each tensor's sums of the reduction's terms
    (0 for an empty tensor). ``k``: the rule's scalars as its named tuple, in the compute
    type."""
    start = rows(table_slots, n_tensors)["sizes"]
    items = work_items(table[start: start + n_tensors], chunk)
    kernel, likes = _kernel(spec, tuple(flags), tuple(codes), int(mode))
    partial = kernel(table, items, n_tensors, table_slots, chunk, k, *likes)
    return per_tensor(partial, items, n_tensors)
