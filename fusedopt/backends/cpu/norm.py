"""The grad-only pre-pass on the CPU: per-tensor sums of squares (clipping by norm,
fusedopt/engine/clip.py) and whether any element is inf or NaN (loss scaling), in one read.

The grad addresses and sizes of the update loop's launch table, split into one task per
chunk (unpacked, whatever the update loop's packing): each task writes its chunk's sum
(accumulated in float64, vectorized) to its own slot, and the chunks of each tensor are
then added in a fixed order, so the result never depends on how threads were scheduled.
The inf/NaN test is a sum of its own, of g - g (0 for a finite element, NaN otherwise):
the sum of squares cannot tell, since it overflows for finite float64 grads above ~1e154.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit, prange, types
from numba.core.extending import NativeValue, models, overload, register_model, typeof_impl, unbox

from ... import config
from ...memory.table import rows, work_items
from . import storage
from ._cache import JIT_OPTIONS
from .element import _pointer


class GradCodeType(types.Opaque):
    def __init__(self, code: int):
        self.code = code
        super().__init__(name=f"GradCode({code})")

    @property
    def key(self):
        return self.code


register_model(GradCodeType)(models.OpaqueModel)


class GradCode:
    """A grad storage code as a compile-time argument (it picks the widening)."""

    def __init__(self, code: int):
        self.code = code
        self._numba_type_ = GradCodeType(code)


@functools.lru_cache(maxsize=None)
def grad_code(dtype: str) -> GradCode:
    return GradCode(storage.CODES[dtype])


@typeof_impl.register(GradCode)
def _typeof_code(value, context):
    return value._numba_type_


@unbox(GradCodeType)
def _unbox_code(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def _widen(code, x):
    """Grad element ``x`` as float64."""


@overload(_widen, inline="always")
def _widen_code(code, x):
    load = storage.load(code.code)

    def body(code, x):
        return np.float64(load(x))
    return body


@njit(fastmath=set(config.NORM_FASTMATH), **JIT_OPTIONS)
def _sums(code, g):
    """(sum of g**2, sum of g - g) in float64; see config.NORM_FASTMATH for why this loop
    may reassociate (neither sum changes meaning: a NaN anywhere stays NaN)."""
    acc = 0.0
    bad = 0.0
    for i in range(g.shape[0]):
        x = _widen(code, g[i])
        acc += x * x
        bad += x - x
    return acc, bad


@njit(parallel=True, **JIT_OPTIONS)
def chunk_sums(code, table, items, n_tensors, n_slots, chunk, grad_like):
    """Per chunk in ``items``: (sum of g**2, sum of g - g), in float64."""
    sizes0 = (2 + n_slots) * n_tensors
    n_work = items.shape[0]
    out = np.empty((2, n_work), np.float64)
    for w in prange(n_work):
        item = items[w]
        t = item >> 32
        n = table[sizes0 + t]
        begin = (item & 0xFFFFFFFF) * chunk
        end = min(begin + chunk, n)
        g = carray(_pointer(table[n_tensors + t], grad_like), n)[begin:end]
        out[0, w], out[1, w] = _sums(code, g)
    return out


def tensor_sums(table: np.ndarray, n_tensors: int, n_slots: int, chunk: int,
                dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(sum of g**2, True where an element is inf or NaN) of every tensor in ``table``
    whose grads are of ``dtype`` (0 and False for empty tensors)."""
    start = rows(n_slots, n_tensors)["sizes"]
    items = work_items(table[start: start + n_tensors], chunk)
    like = np.empty(0, storage.LOOP_DTYPES[storage.CODES[dtype]])
    partial = chunk_sums(grad_code(dtype), table, items, n_tensors, n_slots, chunk, like)
    sums, bad = per_tensor(partial, items, n_tensors)
    return sums, np.isnan(bad)


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
