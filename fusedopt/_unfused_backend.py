"""Unfused backend: the registry's array expressions, one tensor at a time."""

from __future__ import annotations

import numpy as np

from ._clip import NO_CLIP, GradClip
from ._group import Group

name = "unfused"


def _xp(array):
    if isinstance(array, np.ndarray):
        return np
    import cupy
    return cupy


def accepts(array) -> bool:
    return True


def group(dtype, params, states) -> Group:
    return Group(dtype, list(params), [list(s) for s in states], 0,
                 np.zeros((2 + (len(states[0]) if states else 0), 0), np.int64),
                 np.zeros(0, np.int64))


def sum_squares(group: Group, grads):
    """Sum of g**2 of each grad (float64, on the grads' device), for clipping by norm."""
    xp = _xp(grads[0])
    # Squared in float64, as the fused backends do: a float32 grad of 1e20 has a float32
    # square of inf, which would skip a loss-scaled step and zero a clipped grad.
    return xp.stack([xp.sum(xp.square(g, dtype=xp.float64)) for g in grads])


def _clipped(xp, g, scale, limit, compute):
    """Keras' clipping as array expressions: g * scale, then clamp to [-limit, limit]."""
    if scale is not None:
        g = g * scale.astype(compute)
    if limit != np.inf:
        g = xp.clip(g, -compute(limit), compute(limit))
    return g


def step(spec, flags, scalars, group: Group, grads, clip: GradClip = NO_CLIP) -> None:
    compute = np.dtype(group.dtype).type
    h = tuple(compute(x) for x in scalars)
    for t, (p, g, slots) in enumerate(zip(group.params, grads, group.states)):
        xp = _xp(p)
        if clip.active:
            scale = None if clip.scales is None else clip.scales[t]
            g = _clipped(xp, g, scale, clip.limit, compute)
        spec.unfused(xp, p, g, slots, h, flags)
