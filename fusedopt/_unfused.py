"""The unfused baseline: each optimizer's math as plain array expressions.

One array operation at a time, on NumPy or CuPy arrays alike (``xp`` is the array module).
Every operation reads and writes whole arrays, which is what the fused kernels avoid; the
benchmarks compare against these. Same signature for every optimizer: param, grad, the
list of state slots, the scalars (Python floats, in kernel order) and the variant flags.
"""

from __future__ import annotations

KERAS, TORCH_L2, TORCH_DECOUPLED = 0, 1, 2


def _weight_decay(flavor, p, g, lr, wd, wd_factor):
    """Returns the (possibly new) gradient; the param is decayed in place."""
    if flavor == KERAS:
        p -= p * wd * lr
    elif flavor == TORCH_L2:
        g = g + wd * p
    else:
        p *= wd_factor
    return g


def adam(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2, eps, step, bc2_sqrt = h
    flavor, amsgrad = flags
    m, v = slots[0], slots[1]
    g = _weight_decay(flavor, p, g, lr, wd, wd_factor)
    if flavor == KERAS:
        m += (g - m) * one_minus_b1
        v += (g * g - v) * one_minus_b2
    else:
        m += one_minus_b1 * (g - m)
        v *= b2
        v += one_minus_b2 * (g * g)
    if amsgrad:
        xp.maximum(slots[2], v, out=slots[2])
        v = slots[2]
    if flavor == KERAS:
        p -= m * step / (xp.sqrt(v) + eps)
    else:
        p -= step * (m / (xp.sqrt(v) / bc2_sqrt + eps))


# --- Adamax, Nadam, Lion ----------------------------------------------------------------------

def adamax(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, b2, one_minus_b1, eps, bc1, clr = h
    flavor = flags[0]
    m, u = slots[0], slots[1]
    g = _weight_decay(flavor, p, g, lr, wd, wd_factor)
    m += (g - m) * one_minus_b1
    u *= b2
    if flavor == KERAS:
        xp.maximum(u, xp.abs(g), out=u)
        p -= lr * m / ((u + eps) * bc1)
    else:
        xp.maximum(u, xp.abs(g) + eps, out=u)
        p -= clr * (m / u)


def nadam(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, b2, one_minus_b1, one_minus_b2, eps, bc2, c_m, c_g = h
    flavor = flags[0]
    m, v = slots[0], slots[1]
    g = _weight_decay(flavor, p, g, lr, wd, wd_factor)
    m += (g - m) * one_minus_b1
    if flavor == KERAS:
        v += (g * g - v) * one_minus_b2
        p -= (c_m * m + c_g * g) * lr / (xp.sqrt(v / bc2) + eps)
    else:
        v *= b2
        v += one_minus_b2 * (g * g)
        d = xp.sqrt(v / bc2) + eps
        p -= c_g * (g / d)
        p -= c_m * (m / d)


def lion(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, b1, b2, one_minus_b1, one_minus_b2 = h
    m = slots[0]
    g = _weight_decay(flags[0], p, g, lr, wd, wd_factor)
    p -= lr * xp.sign(m * b1 + g * one_minus_b1)
    m *= b2
    m += g * one_minus_b2
