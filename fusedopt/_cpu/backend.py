"""CPU backend: one Numba call per group, however many tensors it holds."""

from __future__ import annotations

import numpy as np

from .. import config
from .._clip import NO_CLIP, GradClip
from .._group import Group, make_group, step_table
from .._table import float_row, rows
from . import norm
from .loop import run, specialize

name = "cpu"


def accepts(array) -> bool:
    return isinstance(array, np.ndarray)


def address(array) -> int:
    return array.__array_interface__["data"][0]


def zeros(like, fill: float = 0.0):
    return np.full(like.shape, fill, dtype=like.dtype)


def group(dtype, params, states) -> Group:
    return make_group(dtype, params, states, config.CPU_CHUNK, address)


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
    dtype = np.dtype(group.dtype)
    compute = dtype.type
    like = np.empty(0, dtype)
    h = tuple(compute(x) for x in scalars)
    rule = specialize(spec.cpu_rule, tuple(int(f) for f in flags))
    run(rule, table, len(group.params), group.n_slots, group.chunk, like, like, h)
