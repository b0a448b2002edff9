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


# --- SGD, RMSprop, Adagrad, Adadelta -----------------------------------------------------------
# Constants such as 1 - rho arrive in h: a Python literal here would promote float32 math to
# float64 under Numba.

@njit(**_RULE)
def sgd(i, p, g, m, unused1, unused2, h, flags):
    lr, wd, wd_factor, momentum, grad_scale = h
    flavor, use_momentum, nesterov = flags
    pi, gi = weight_decay(flavor, p[i], g[i], lr, wd, wd_factor)
    if not use_momentum:
        p[i] = pi - lr * gi
    elif flavor == KERAS:
        mi = m[i] * momentum - gi * lr
        m[i] = mi
        p[i] = pi + (mi * momentum - gi * lr) if nesterov else pi + mi
    else:
        # grad_scale is 1 on the first step (the buffer becomes g), 1 - dampening after.
        mi = m[i] * momentum + grad_scale * gi
        m[i] = mi
        p[i] = pi - lr * (gi + momentum * mi if nesterov else mi)


@njit(**_RULE)
def rmsprop(i, p, g, v, s1, s2, h, flags):
    lr, wd, wd_factor, rho, one_minus_rho, momentum, eps = h
    flavor, use_momentum, centered = flags
    mom = s1
    gbar = s2 if use_momentum else s1  # slots: v, momentum if used, then gbar
    pi, gi = weight_decay(flavor, p[i], g[i], lr, wd, wd_factor)
    vi = rho * v[i] + one_minus_rho * (gi * gi)
    v[i] = vi
    ms = vi
    if centered:
        if flavor == KERAS:
            gb = rho * gbar[i] + one_minus_rho * gi
        else:
            gb = gbar[i] + one_minus_rho * (gi - gbar[i])
        gbar[i] = gb
        ms = vi - gb * gb
    if flavor == KERAS:
        inc = lr * gi / np.sqrt(ms + eps)
        if use_momentum:
            mom[i] = momentum * mom[i] + inc
            p[i] = pi - mom[i]
        else:
            p[i] = pi - inc
    else:
        avg = np.sqrt(ms) + eps
        if use_momentum:
            mom[i] = momentum * mom[i] + gi / avg
            p[i] = pi - lr * mom[i]
        else:
            p[i] = pi - lr * (gi / avg)


@njit(**_RULE)
def adagrad(i, p, g, acc, unused1, unused2, h, flags):
    lr, wd, wd_factor, eps, step = h
    flavor = flags[0]
    pi, gi = weight_decay(flavor, p[i], g[i], lr, wd, wd_factor)
    ai = acc[i] + gi * gi
    acc[i] = ai
    if flavor == KERAS:
        p[i] = pi - step * gi / np.sqrt(ai + eps)
    else:
        p[i] = pi - step * (gi / (np.sqrt(ai) + eps))


@njit(**_RULE)
def adadelta(i, p, g, eg, ed, unused, h, flags):
    lr, wd, wd_factor, rho, one_minus_rho, eps = h
    flavor = flags[0]
    pi, gi = weight_decay(flavor, p[i], g[i], lr, wd, wd_factor)
    egi = rho * eg[i] + one_minus_rho * (gi * gi)
    eg[i] = egi
    if flavor == KERAS:
        d = np.sqrt(ed[i] + eps) * gi / np.sqrt(egi + eps)
    else:
        d = np.sqrt(ed[i] + eps) / np.sqrt(egi + eps) * gi
    ed[i] = rho * ed[i] + one_minus_rho * (d * d)
    p[i] = pi - lr * d


# --- Adamax, Nadam, Lion ----------------------------------------------------------------------

@njit(**_RULE)
def adamax(i, p, g, m, u, unused, h, flags):
    lr, wd, wd_factor, b2, one_minus_b1, eps, bc1, clr = h
    flavor = flags[0]
    pi, gi = weight_decay(flavor, p[i], g[i], lr, wd, wd_factor)
    mi = m[i] + (gi - m[i]) * one_minus_b1
    scaled = b2 * u[i]
    # The branches only compute; the stores below are unconditional, so LLVM turns the
    # branches into selects and vectorizes the loop.
    if flavor == KERAS:
        a = abs(gi)
        ui = scaled if scaled > a else a
        pi = pi - lr * mi / ((ui + eps) * bc1)
    else:
        a = abs(gi) + eps
        ui = scaled if scaled > a else a
        pi = pi - clr * (mi / ui)
    m[i] = mi
    u[i] = ui
    p[i] = pi


@njit(**_RULE)
def nadam(i, p, g, m, v, unused, h, flags):
    lr, wd, wd_factor, b2, one_minus_b1, one_minus_b2, eps, bc2, c_m, c_g = h
    flavor = flags[0]
    pi, gi = weight_decay(flavor, p[i], g[i], lr, wd, wd_factor)
    mi = m[i] + (gi - m[i]) * one_minus_b1
    # Branches compute, unconditional stores follow: see adamax.
    if flavor == KERAS:
        vi = v[i] + (gi * gi - v[i]) * one_minus_b2
        pi = pi - (c_m * mi + c_g * gi) * lr / (np.sqrt(vi / bc2) + eps)
    else:
        vi = b2 * v[i] + one_minus_b2 * (gi * gi)
        d = np.sqrt(vi / bc2) + eps
        pi = pi - c_g * (gi / d)
        pi = pi - c_m * (mi / d)
    m[i] = mi
    v[i] = vi
    p[i] = pi


@njit(**_RULE)
def lion(i, p, g, m, unused1, unused2, h, flags):
    lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2 = h
    pi, gi = weight_decay(flags[0], p[i], g[i], lr, wd, wd_factor)
    c = m[i] * b1 + gi * one_minus_b1
    # lr * sign(c) as a select: +-lr exactly, c * lr = +-0 for c = 0 and NaN for NaN.
    step = lr if c > 0 else (-lr if c < 0 else c * lr)
    p[i] = pi - step
    m[i] = m[i] * b2 + gi * one_minus_b2
