"""Keras' moving average of the weights (``use_ema``), kept by the engine after each step.

After every applied step (Keras' ``_update_model_variables_moving_average``), for every
param the optimizer holds, with ``i`` the step count before the step and ``mu`` the momentum::

    m = 0 if i == 0 else mu            # the first step starts the average at the weights
    average = m * average + (1 - m) * param

and, when ``overwrite_frequency`` is set and ``(i + 1) % overwrite_frequency == 0``, the
params are overwritten with their averages. ``finalize`` overwrites them once (Keras'
``finalize_variable_values``, which ``model.fit`` calls after the last epoch).

Where it runs:

- On the CPU backend the average is one more slot of the fused step (fusedopt/backends/cpu/loop.py):
  the kernel reads and writes it beside the state, and takes the param from registers after
  its store, so it costs 8 bytes per float32 element; for Adam 36 bytes per element instead
  of 28 + 28 = 56. float32 and float64 averages are the bits of the pass below (the same
  three operations in the same order, with no contraction into a fused multiply-add);
  16-bit averages are computed in float32 and rounded once, where the pass rounds each
  of its three operations (as Keras does).
- Elsewhere (CUDA, the unfused baseline) and for params a step does not include, it is
  :meth:`MovingAverage.update`, a separate pass of array expressions (NumPy, CuPy and torch
  tensors alike): ``average *= m`` then ``average += param * (1 - m)`` move 28 bytes per
  float32 element (8, then 20 with the product's temporary), two launches per tensor on a
  GPU. The CUDA kernels do not have the slot yet.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..memory.arrays import kind_of


@dataclass(frozen=True)
class MovingAverage:
    """``use_ema``'s settings: Keras' ``ema_momentum`` and ``ema_overwrite_frequency``."""

    momentum: float = 0.99
    overwrite_frequency: int | None = None

    def __post_init__(self):
        m = self.momentum
        if (not isinstance(m, numbers.Real) or isinstance(m, bool) or not math.isfinite(m)
                or not 0.0 <= m <= 1.0):
            raise ValueError(f"ema_momentum must be in [0, 1], got {m!r}")
        f = self.overwrite_frequency
        if f is not None and (not isinstance(f, numbers.Integral) or isinstance(f, bool)
                              or f < 1):
            raise ValueError(f"ema_overwrite_frequency must be an integer >= 1 or None, "
                             f"got {f!r}")

    def zeros(self, param):
        """A new average for ``param``, beside it."""
        kind = kind_of(param)
        return kind.zeros(param, kind.dtype(param))

    def scalars(self, param, iterations: int) -> tuple[float, float]:
        """``(m, 1 - m)`` of a step that found ``iterations`` steps done, as the values
        :meth:`update` computes with for ``param`` (rounded to its type)."""
        m, one_minus_m = self._momentum(param, iterations)
        return float(m), float(one_minus_m)

    def _momentum(self, param, iterations: int):
        """``(m, 1 - m)`` in ``param``'s type; m is 0 at the first step."""
        return _momentum(param, 0.0 if iterations == 0 else self.momentum)

    def _blend(self, param, average, iterations: int) -> None:
        kind = kind_of(param)
        m, one_minus_m = self._momentum(param, iterations)
        with kind.launch_context(kind.device(param)):  # on the param's device and stream
            average *= m
            average += param * one_minus_m

    def update(self, params, averages, iterations: int, done=()) -> None:
        """The averages after a step that found ``iterations`` steps done before it, but for
        the positions in ``done``, which the step's own pass updated."""
        if len(done) < len(params):  # else the step's pass did them all (distinct positions)
            done = set(done)
            for position, (p, average) in enumerate(zip(params, averages)):
                if position not in done:
                    self._blend(p, average, iterations)
        f = self.overwrite_frequency
        if f and (iterations + 1) % f == 0:
            overwrite(params, averages)


def overwrite(params, averages) -> None:
    """Copy each average into its param, in place."""
    for p, average in zip(params, averages):
        kind = kind_of(p)
        with kind.launch_context(kind.device(p)):
            p[...] = average


def _momentum(param, momentum: float):
    """``momentum`` and ``1 - momentum`` rounded to ``param``'s type, as Keras computes them
    (its ``1 - m`` is taken in that type, not in double)."""
    try:
        scalar = np.dtype(kind_of(param).dtype(param)).type
    except TypeError:  # a 16-bit type NumPy does not name: its arithmetic is float32's
        scalar = np.float32
    m = scalar(momentum)
    return m, scalar(1) - m
