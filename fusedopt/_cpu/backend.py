"""CPU backend: one Numba call per group, however many tensors it holds."""

from __future__ import annotations

import numpy as np

from .. import config
from .._group import Group, make_group, step_table
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


def step(spec, flags, scalars, group: Group, grads) -> None:
    table = step_table(group, grads, address)
    dtype = np.dtype(group.dtype)
    compute = dtype.type
    like = np.empty(0, dtype)
    h = tuple(compute(x) for x in scalars)
    rule = specialize(spec.cpu_rule, tuple(int(f) for f in flags))
    run(rule, table, len(group.params), group.n_slots, group.chunk, like, like, h)
