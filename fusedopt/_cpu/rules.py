"""One scalar update rule per optimizer, shared by every CPU loop.

A rule updates element ``i`` of param ``p`` and state slots ``s0..s2`` in place from grad
``g``. ``h`` holds the scalars in the param's compute type, in the same order as the CUDA
kernel's arguments (the first three are lr, wd, wd_factor); ``flags`` the variant (the
CUDA template arguments after the type). Flags are loop-invariant, so LLVM unswitches them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

KERAS, TORCH_L2, TORCH_DECOUPLED = 0, 1, 2

_RULE = {"inline": "always", "error_model": "numpy"}


@njit(**_RULE)
def weight_decay(flavor, p, g, lr, wd, wd_factor):
    if flavor == KERAS:
        p = p - p * wd * lr
    elif flavor == TORCH_L2:
        g = g + wd * p
    else:
        p = p * wd_factor
    return p, g


@njit(**_RULE)
def adam(i, p, g, m, v, vhat, h, flags):
    lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2, eps, step, bc2_sqrt = h
    flavor, amsgrad = flags
    pi, gi = weight_decay(flavor, p[i], g[i], lr, wd, wd_factor)
    if flavor == KERAS:
        mi = m[i] + (gi - m[i]) * one_minus_b1
        vi = v[i] + (gi * gi - v[i]) * one_minus_b2
    else:
        mi = m[i] + one_minus_b1 * (gi - m[i])
        vi = b2 * v[i] + one_minus_b2 * (gi * gi)
    m[i] = mi
    v[i] = vi
    v_used = vi
    if amsgrad:
        v_used = max(vhat[i], vi)
        vhat[i] = v_used
    if flavor == KERAS:
        p[i] = pi - mi * step / (np.sqrt(v_used) + eps)
    else:
        p[i] = pi - step * (mi / (np.sqrt(v_used) / bc2_sqrt + eps))
