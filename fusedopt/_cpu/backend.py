"""CPU backend: one Numba call per group, however many tensors it holds."""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import config
from .._clip import NO_CLIP, GradClip
from .._arrays import foreign, kind_of
from .._group import Group, make_group, step_table
from .._table import float_row, rows
from . import norm
from ._cache import JIT_OPTIONS
from .loop import run, run_serial, specialize

name = "cpu"

#: dtype name -> an empty array of it: what types the loop's pointers.
_LIKE: dict[str, np.ndarray] = {}


def accepts(array) -> bool:
    """NumPy arrays, and host arrays of a registered kind (fusedopt/_arrays.py)."""
    if isinstance(array, np.ndarray):
        return True
    return foreign(array) and not kind_of(array).on_device(array)


@njit(**JIT_OPTIONS)
def _ndarray_address(array) -> int:
    """The address of ``array``'s first element. Compiled: a quarter of the cost of reading
    ``__array_interface__``, which was most of a small step's host time."""
    return array.ctypes.data


def address(array) -> int:
    if isinstance(array, np.ndarray):
        return _ndarray_address(array)
    return kind_of(array).address(array)


def group(dtype, params, states) -> Group:
    # Packed: tiny tensors share a task, so every task is about CPU_CHUNK elements and
    # Numba's static split of tasks between threads stays even.
    return make_group(dtype, params, states, config.CPU_CHUNK, address, pack=True)


def sum_squares(group: Group, grads) -> np.ndarray:
    """Sum of g**2 of each grad (float64), for clipping by norm."""
    table = step_table(group, grads, address)
    return norm.tensor_sums(table, len(group.params), group.n_slots, group.chunk,
                            np.dtype(group.dtype))


def _set_clip(group: Group, clip: GradClip) -> None:
    """Write this step's grad scales into the table the loop reads (1.0 when none)."""
    table, n = group.table.array, len(group.params)
    start = rows(group.n_slots, n)["scales"]
    if clip.scales is not None:
        table[start: start + n] = float_row(clip.scales, n)
        group.grads_scaled = True
    elif group.grads_scaled:
        table[start: start + n] = float_row(1.0, n)
        group.grads_scaled = False


def step(spec, flags, scalars, group: Group, grads, clip: GradClip = NO_CLIP) -> None:
    group.table.set_limit(clip.limit)
    table = step_table(group, grads, address)
    _set_clip(group, clip)
    n_work = group.table.n_work
    if n_work == 0:
        return
    like = _LIKE.get(group.dtype)
    if like is None:
        like = _LIKE[group.dtype] = np.empty(0, np.dtype(group.dtype))
    variant = specialize(spec.cpu_rule, flags)
    # One task cannot be shared between threads: run it here rather than wake the pool.
    loop = run if n_work > 1 else run_serial
    loop(variant, table, group.table.n_tensors, group.n_slots, group.chunk, like, like,
         tuple(scalars))
