"""One scalar update rule per optimizer, shared by every CPU loop.

A rule takes one element's param ``p``, grad ``g`` and state slots ``s0..s2`` as values in
the compute type and returns the new ``(p, s0, s1, s2)`` (a slot the variant does not use
comes back as it went in). The loop (fusedopt/backends/cpu/loop.py) widens what it loads and rounds
what it stores (fusedopt/backends/cpu/storage.py), so no rule knows how anything is stored.
``h`` holds the scalars in the compute type, in the same order as the CUDA kernel's rows
(the first three are lr, wd, wd_factor); ``flags`` the variant (the CUDA template arguments
after the storage). Flags are compile-time constants of the loop, so LLVM drops the
branches of other variants.
"""

from __future__ import annotations

import numpy as np
from numba import njit

KERAS, TORCH_L2, TORCH_DECOUPLED = 0, 1, 2

_RULE = {"inline": "always", "error_model": "numpy"}


@njit(**_RULE)
def weight_decay(flavor, p, g, lr, wd, wd_factor):
    # With wd = 0 the terms are skipped, as the peers skip them: an inf param times 0 is NaN.
    if flavor == KERAS:
        if wd != 0:
            p = p - p * wd * lr
    elif flavor == TORCH_L2:
        if wd != 0:
            g = g + wd * p
    else:
        p = p * wd_factor
    return p, g


@njit(**_RULE)
def adam(p, g, m, v, vhat, h, flags):
    lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2, eps, step, bc2_sqrt = h
    flavor, amsgrad = flags
    p, g = weight_decay(flavor, p, g, lr, wd, wd_factor)
    if flavor == KERAS:
        m = m + (g - m) * one_minus_b1
        v = v + (g * g - v) * one_minus_b2
    else:
        m = m + one_minus_b1 * (g - m)
        v = b2 * v + one_minus_b2 * (g * g)
    v_used = v
    if amsgrad:
        vhat = vhat if vhat > v else v
        v_used = vhat
    if flavor == KERAS:
        p = p - m * step / (np.sqrt(v_used) + eps)
    else:
        p = p - step * (m / (np.sqrt(v_used) / bc2_sqrt + eps))
    return p, m, v, vhat


# --- SGD, RMSprop, Adagrad, Adadelta -----------------------------------------------------------
# Constants such as 1 - rho arrive in h: a Python literal here would promote float32 math to
# float64 under Numba.

@njit(**_RULE)
def sgd(p, g, m, s1, s2, h, flags):
    lr, wd, wd_factor, momentum, grad_scale = h
    flavor, use_momentum, nesterov = flags
    p, g = weight_decay(flavor, p, g, lr, wd, wd_factor)
    if not use_momentum:
        p = p - lr * g
    elif flavor == KERAS:
        m = m * momentum - g * lr
        p = p + (m * momentum - g * lr) if nesterov else p + m
    else:
        # grad_scale is 1 on the first step (the buffer becomes g), 1 - dampening after.
        m = m * momentum + grad_scale * g
        p = p - lr * (g + momentum * m if nesterov else m)
    return p, m, s1, s2


@njit(**_RULE)
def rmsprop(p, g, v, s1, s2, h, flags):
    lr, wd, wd_factor, rho, one_minus_rho, momentum, eps = h
    flavor, use_momentum, centered = flags
    mom = s1
    gbar = s2 if use_momentum else s1  # slots: v, momentum if used, then gbar
    p, g = weight_decay(flavor, p, g, lr, wd, wd_factor)
    v = rho * v + one_minus_rho * (g * g)
    ms = v
    if centered:
        if flavor == KERAS:
            gbar = rho * gbar + one_minus_rho * g
        else:
            gbar = gbar + one_minus_rho * (g - gbar)
        ms = v - gbar * gbar
    if flavor == KERAS:
        inc = lr * g / np.sqrt(ms + eps)
        if use_momentum:
            mom = momentum * mom + inc
            p = p - mom
        else:
            p = p - inc
    else:
        avg = np.sqrt(ms) + eps
        if use_momentum:
            mom = momentum * mom + g / avg
            p = p - lr * mom
        else:
            p = p - lr * (g / avg)
    if use_momentum:
        return p, v, mom, gbar
    return p, v, gbar, s2


@njit(**_RULE)
def adagrad(p, g, acc, s1, s2, h, flags):
    lr, wd, wd_factor, eps, step = h
    flavor = flags[0]
    p, g = weight_decay(flavor, p, g, lr, wd, wd_factor)
    acc = acc + g * g
    if flavor == KERAS:
        p = p - step * g / np.sqrt(acc + eps)
    else:
        p = p - step * (g / (np.sqrt(acc) + eps))
    return p, acc, s1, s2


@njit(**_RULE)
def adadelta(p, g, eg, ed, s2, h, flags):
    lr, wd, wd_factor, rho, one_minus_rho, eps = h
    flavor = flags[0]
    p, g = weight_decay(flavor, p, g, lr, wd, wd_factor)
    eg = rho * eg + one_minus_rho * (g * g)
    if flavor == KERAS:
        d = np.sqrt(ed + eps) * g / np.sqrt(eg + eps)
    else:
        d = np.sqrt(ed + eps) / np.sqrt(eg + eps) * g
    ed = rho * ed + one_minus_rho * (d * d)
    return p - lr * d, eg, ed, s2


# --- Adamax, Nadam, Lion ----------------------------------------------------------------------

@njit(**_RULE)
def adamax(p, g, m, u, s2, h, flags):
    lr, wd, wd_factor, b2, one_minus_b1, eps, bc1, clr = h
    flavor = flags[0]
    p, g = weight_decay(flavor, p, g, lr, wd, wd_factor)
    m = m + (g - m) * one_minus_b1
    scaled = b2 * u
    if flavor == KERAS:
        a = abs(g)
        u = scaled if scaled > a else a
        p = p - lr * m / ((u + eps) * bc1)
    else:
        a = abs(g) + eps
        u = scaled if scaled > a else a
        p = p - clr * (m / u)
    return p, m, u, s2


@njit(**_RULE)
def nadam(p, g, m, v, s2, h, flags):
    lr, wd, wd_factor, b2, one_minus_b1, one_minus_b2, eps, bc2, c_m, c_g = h
    flavor = flags[0]
    p, g = weight_decay(flavor, p, g, lr, wd, wd_factor)
    m = m + (g - m) * one_minus_b1
    if flavor == KERAS:
        v = v + (g * g - v) * one_minus_b2
        p = p - (c_m * m + c_g * g) * lr / (np.sqrt(v / bc2) + eps)
    else:
        v = b2 * v + one_minus_b2 * (g * g)
        d = np.sqrt(v / bc2) + eps
        p = p - c_g * (g / d)
        p = p - c_m * (m / d)
    return p, m, v, s2


@njit(**_RULE)
def lion(p, g, m, s1, s2, h, flags):
    lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2 = h
    p, g = weight_decay(flags[0], p, g, lr, wd, wd_factor)
    c = m * b1 + g * one_minus_b1
    # lr * sign(c) as a select: +-lr exactly, c * lr = +-0 for c = 0 and NaN for NaN.
    step = lr if c > 0 else (-lr if c < 0 else c * lr)
    return p - step, m * b2 + g * one_minus_b2, s1, s2
