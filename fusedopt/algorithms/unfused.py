"""The unfused baseline: each optimizer's math as plain array expressions.

One array operation at a time, on NumPy or CuPy arrays alike (``xp`` is the array module).
Every operation reads and writes whole arrays, which is what the fused kernels avoid; the
benchmarks compare against these. Same signature for every optimizer: param, grad, the
list of state slots, the scalars (Python floats, in kernel order) and the variant flags.
"""

from __future__ import annotations

KERAS, TORCH_L2, TORCH_DECOUPLED = 0, 1, 2


def _weight_decay(flavor, p, g, lr, wd, wd_factor):
    """Returns the (possibly new) gradient; the param is decayed in place. With wd = 0 the
    terms are skipped, as the peers skip them (an inf param times 0 would be NaN)."""
    if flavor == KERAS:
        if wd != 0:
            p -= p * wd * lr
    elif flavor == TORCH_L2:
        if wd != 0:
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


# --- SGD, RMSprop, Adagrad, Adadelta -----------------------------------------------------------

def sgd(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, momentum, grad_scale = h
    flavor, use_momentum, nesterov = flags
    g = _weight_decay(flavor, p, g, lr, wd, wd_factor)
    if not use_momentum:
        p -= lr * g
        return
    m = slots[0]
    m *= momentum
    if flavor == KERAS:
        m -= g * lr
        p += m * momentum - g * lr if nesterov else m
    else:
        m += grad_scale * g  # grad_scale: 1 on the first step, 1 - dampening after
        p -= lr * (g + momentum * m if nesterov else m)


def rmsprop(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, rho, one_minus_rho, momentum, eps = h
    flavor, use_momentum, centered = flags
    v = slots[0]
    g = _weight_decay(flavor, p, g, lr, wd, wd_factor)
    v *= rho
    v += one_minus_rho * (g * g)
    ms = v
    if centered:
        gbar = slots[1 + use_momentum]
        if flavor == KERAS:
            gbar *= rho
            gbar += one_minus_rho * g
        else:
            gbar += one_minus_rho * (g - gbar)
        ms = v - gbar * gbar
    if flavor == KERAS:
        step = lr * g / xp.sqrt(ms + eps)
    else:
        step = g / (xp.sqrt(ms) + eps)
    if use_momentum:
        mom = slots[1]
        mom *= momentum
        mom += step
        step = mom
    if flavor == KERAS:
        p -= step
    else:
        p -= lr * step


def adagrad(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, eps, step = h
    flavor = flags[0]
    acc = slots[0]
    g = _weight_decay(flavor, p, g, lr, wd, wd_factor)
    acc += g * g
    if flavor == KERAS:
        p -= step * g / xp.sqrt(acc + eps)
    else:
        p -= step * (g / (xp.sqrt(acc) + eps))


def adadelta(xp, p, g, slots, h, flags):
    lr, wd, wd_factor, rho, one_minus_rho, eps = h
    flavor = flags[0]
    eg, ed = slots
    g = _weight_decay(flavor, p, g, lr, wd, wd_factor)
    eg *= rho
    eg += one_minus_rho * (g * g)
    if flavor == KERAS:
        d = xp.sqrt(ed + eps) * g / xp.sqrt(eg + eps)
    else:
        d = xp.sqrt(ed + eps) / xp.sqrt(eg + eps) * g
    ed *= rho
    ed += one_minus_rho * (d * d)
    p -= lr * d


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
