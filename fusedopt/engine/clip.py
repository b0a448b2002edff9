"""Keras' gradient clipping, folded into the fused pass.

Keras clips every gradient before the update, by one of (checked in this order; setting
more than one is an error):

- ``clipnorm = c``: each tensor on its own, ``g <- g * c / max(||g||, c)``;
- ``global_clipnorm = c``: every tensor of the call by one factor,
  ``g <- g * c / max(sqrt(sum_k ||g_k||^2), c)`` (NaN if that norm is not finite);
- ``clipvalue = c``: ``g <- clamp(g, -c, c)``.

Clipping comes before weight decay in both conventions and always follows Keras' formulas:
torch.optim has no clipping argument (``torch.nn.utils.clip_grad_norm_``, called before
``step()``, is the global norm with 1e-6 added to the norm).

Every backend applies ``g <- clamp(g * scale, -limit, limit)`` as it loads a grad, with a
per-tensor ``scale`` and ``limit`` read from the launch table (fusedopt/memory/table.py): 1.0 and
+inf are exact no-ops, so no optimizer rule knows about clipping. A value clip costs
nothing more; a norm clip first needs each tensor's sum of squares: the grad pre-pass, a
reduction phase of its own (fusedopt/engine/reductions.py, ``grad_prepass``) that sums the
terms declared in fusedopt/algorithms/gradsums.py over the grads as stored - widened to
float64, not clipped, nothing but the grads read - through the backends' ``reduce``, one
launch per launch group, in the same read as the loss scale's inf/NaN test. The scales are
computed from those sums here, with array expressions on the grads' device, so a GPU step
never waits for the host.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..memory.group import NO_CLIP, GradClip  # noqa: F401  (what a backend applies)

NAMES = ("clipnorm", "global_clipnorm", "clipvalue")


@dataclass(frozen=True)
class Clipping:
    """The clipping one optimizer (or one functional call) asks for; all None: none."""

    clipnorm: float | None = None
    global_clipnorm: float | None = None
    clipvalue: float | None = None

    def __post_init__(self):
        values = dict(zip(NAMES, (self.clipnorm, self.global_clipnorm, self.clipvalue)))
        given = [n for n, v in values.items() if v is not None]
        if len(given) > 1:
            raise ValueError(f"only one of clipnorm, global_clipnorm, clipvalue can be set, "
                             f"got {', '.join(given)}")
        for n, v in values.items():
            if v is None:
                continue
            if (not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v)
                    or v <= 0):
                raise ValueError(f"{n} must be a positive finite number, got {v!r}; "
                                 f"pass None for no clipping")

    @property
    def by_norm(self) -> bool:
        return self.clipnorm is not None or self.global_clipnorm is not None

    @property
    def limit(self) -> float:
        """The value clip, +inf when there is none."""
        if self.by_norm or self.clipvalue is None:
            return math.inf
        return float(self.clipvalue)


NONE = Clipping()


def _xp(array):
    if isinstance(array, np.ndarray):
        return np
    import cupy
    return cupy


def scales(clipping: Clipping, sums: list) -> list:
    """Per-tensor grad scales (float64 arrays on the sums' device), one array per group,
    from each group's per-tensor sums of squares."""
    if clipping.clipnorm is not None:
        c = float(clipping.clipnorm)
        out = []
        for s in sums:
            xp = _xp(s)
            # maximum propagates NaN: a NaN grad makes its tensor NaN, as in Keras.
            out.append(c / xp.maximum(xp.sqrt(s), c))
        return out
    c = float(clipping.global_clipnorm)
    live = [s for s in sums if s.size]
    if not live:
        return [s.copy() for s in sums]
    xp = _xp(live[0])
    total = live[0].sum()
    for s in live[1:]:
        total = total + s.sum()
    norm = xp.sqrt(total)
    # + (norm - norm): a non-finite global norm makes every grad NaN, as Keras does.
    scale = c / xp.maximum(norm, c) + (norm - norm)
    return [xp.zeros_like(s) + scale for s in sums]


def grad_scales(clipping: Clipping, sums: list, grad_scale=None) -> list:
    """Per-tensor grad scales, one array per group (None each when there is nothing to
    scale), from each group's per-tensor sums of squares of the grads as given.

    ``grad_scale``: the grads carry a loss scale ``s`` and are divided by it, folded into the
    same scale (so ``g * (1/s)``, exact for a power of two); a norm clip then sees the norms
    of the unscaled grads. ``s`` is a number, or a 0-d array on the sums' device (never read
    on the host: 1/s is computed there).
    """
    if grad_scale is None:
        return scales(clipping, sums) if clipping.by_norm else [None] * len(sums)
    if isinstance(grad_scale, numbers.Real):
        inv = 1.0 / float(grad_scale)
    else:
        inv = 1.0 / _xp(sums[0]).asarray(grad_scale, dtype=np.float64).reshape(())
    if not clipping.by_norm:
        return [_xp(s).zeros(s.shape, np.float64) + inv for s in sums]
    unscaled = [s * (inv * inv) for s in sums]
    return [c * inv for c in scales(clipping, unscaled)]


def launch_clip(scale, limit: float) -> GradClip:
    """What one launch applies to its grads: ``scale`` (None: 1) and ``limit``."""
    return NO_CLIP if scale is None and limit == math.inf else GradClip(scale, limit)
