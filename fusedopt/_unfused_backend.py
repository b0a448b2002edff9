"""Unfused backend: the registry's array expressions, one tensor at a time."""

from __future__ import annotations

import numpy as np

from ._group import Group

name = "unfused"


def _xp(array):
    if isinstance(array, np.ndarray):
        return np
    import cupy
    return cupy


def accepts(array) -> bool:
    return True


def zeros(like, fill: float = 0.0):
    xp = _xp(like)
    return xp.full(like.shape, fill, dtype=like.dtype)


def group(dtype, params, states) -> Group:
    return Group(dtype, list(params), [list(s) for s in states], 0,
                 np.zeros((2 + (len(states[0]) if states else 0), 0), np.int64),
                 np.zeros(0, np.int64))


def step(spec, flags, scalars, group: Group, grads) -> None:
    compute = np.dtype(group.dtype).type
    h = tuple(compute(x) for x in scalars)
    for p, g, slots in zip(group.params, grads, group.states):
        spec.unfused(_xp(p), p, g, slots, h, flags)
