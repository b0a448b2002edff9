"""The float64 oracle of the factored second moment (Adafactor), beside tests/reference.py
(which takes it in, so ``reference.step("adafactor", ...)`` and ``reference.adafactor``
reach it): written from the paper and the peers' documentation, never from the rule."""

from __future__ import annotations

import numpy as np


def _zeros(state, key, like, value=0.0):
    if key not in state:
        state[key] = np.full_like(like, value, dtype=np.float64)
    return state[key]


def adafactor(p, g, state, t, hp, convention):
    """Shazeer & Stern 2018, Algorithm 4 (factored second moment, rank >= 2 factored over
    its last two dimensions, batched over the others), with relative step
    rho = min(lr, 1/sqrt(t)), alpha = max(eps2, RMS(theta)) rho, beta_2 = 1 - t^decay and
    update clipping u / max(1, RMS(u) / d), as the peers document it. torch.optim's
    (its docstring's note): row and column means of g^2, eps1 as a floor of the row
    factors' mean and of the estimate, eps1 None meaning float32's machine epsilon, decay
    theta *= 1 - lr wd after alpha. Keras': g^2 + eps1 averaged, v = r / mean(r) * c,
    Keras' decay first; beta_2 in float32 (Keras computes it from the float32 step)."""
    if p.size == 0:
        return p
    lr, decay, d = hp["learning_rate"], hp["beta_2_decay"], hp["clip_threshold"]
    eps1, eps2 = hp["epsilon_1"], hp["epsilon_2"]
    eps1 = float(np.finfo(np.float32).eps) if eps1 is None else eps1
    wd = hp.get("weight_decay") or 0.0
    if convention == "keras":
        if wd:
            p = p - p * wd * lr
        # keras/src/optimizers/adafactor.py: beta, 1 - beta and rho from the float32 step
        beta32 = np.float32(1) - np.float32(t) ** np.float32(decay)
        beta, new = float(beta32), float(np.float32(1) - beta32)
        s = g * g + eps1
        rho = float(min(np.float32(lr), np.float32(1) / np.sqrt(np.float32(t))))
    else:
        new = t ** decay
        beta = 1 - new
        s = g * g
        rho = min(lr, 1 / np.sqrt(t))
    alpha = max(eps2, np.sqrt(np.mean(p * p))) * rho
    if convention == "torch":
        p = p * (1 - lr * wd)
    if p.ndim >= 2:
        r = state["r"] = beta * _zeros(state, "r", s.mean(axis=-1)) + new * s.mean(-1)
        c = state["c"] = beta * _zeros(state, "c", s.mean(axis=-2)) + new * s.mean(-2)
        row_mean = r.mean(axis=-1)[..., None, None]
        if convention == "torch":
            row_mean = np.maximum(row_mean, eps1)
        v = r[..., :, None] * c[..., None, :] / row_mean
    else:
        v = state["v"] = beta * _zeros(state, "v", p) + new * s
    u = g / np.sqrt(np.maximum(v, eps1 * eps1) if convention == "torch" else v)
    rms_u = np.sqrt(np.mean(u * u))
    return p - alpha / max(1.0, rms_u / d) * u
