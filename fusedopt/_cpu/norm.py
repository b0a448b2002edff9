"""Per-tensor sums of squares of the grads, for clipping by norm (fusedopt/_clip.py).

The grad addresses and sizes of the update loop's launch table, split into one task per
chunk (unpacked, whatever the update loop's packing): each task writes its chunk's sum
(accumulated in float64, vectorized) to its own slot, and the chunks of each tensor are
then added in a fixed order, so the result never depends on how threads were scheduled.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange

from .. import config
from .._table import rows, work_items
from ._cache import JIT_OPTIONS
from .loop import _pointer


@njit(fastmath=set(config.NORM_FASTMATH), **JIT_OPTIONS)
def _sum_squares(g):
    """Sum of g**2 in float64; see config.NORM_FASTMATH for why this loop may reassociate."""
    acc = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        acc += x * x
    return acc


@njit(parallel=True, **JIT_OPTIONS)
def chunk_sums(table, items, n_tensors, n_slots, chunk, grad_like):
    """Sum of g**2 over every chunk in ``items``, in float64."""
    sizes0 = (2 + n_slots) * n_tensors
    n_work = items.shape[0]
    out = np.empty(n_work, np.float64)
    for w in prange(n_work):
        item = items[w]
        t = item >> 32
        n = table[sizes0 + t]
        begin = (item & 0xFFFFFFFF) * chunk
        end = min(begin + chunk, n)
        g = carray(_pointer(table[n_tensors + t], grad_like), n)[begin:end]
        out[w] = _sum_squares(g)
    return out


def tensor_sums(table: np.ndarray, n_tensors: int, n_slots: int, chunk: int,
                dtype) -> np.ndarray:
    """Sum of g**2 of every tensor in ``table`` (0 for empty tensors), float64."""
    start = rows(n_slots, n_tensors)["sizes"]
    items = work_items(table[start: start + n_tensors], chunk)
    partial = chunk_sums(table, items, n_tensors, n_slots, chunk, np.empty(0, dtype))
    tensors = items >> 32
    out = np.zeros(n_tensors, np.float64)
    if partial.size:
        starts = np.flatnonzero(np.r_[True, tensors[1:] != tensors[:-1]])
        out[tensors[starts]] = np.add.reduceat(partial, starts)
    return out
