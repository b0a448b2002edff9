"""Dynamic loss scaling around any fusedopt optimizer, as Keras' ``LossScaleOptimizer``."""

from __future__ import annotations

import numpy as np

from .base import Optimizer


class LossScaleOptimizer:
    r"""Dynamic loss scaling for 16-bit training, built on fused ``grad_scale``.

    The loss is multiplied by a scale before the backward pass (:meth:`scale_loss`), so
    small gradients survive float16; the grads handed to :meth:`apply_gradients` carry that
    scale, and the inner optimizer divides them by it inside its one fused pass
    (``inner.apply_gradients(pairs, grad_scale=scale)``), where an inf or NaN anywhere in
    the call skips the whole step (params, state, ``iterations`` untouched). After each
    call the scale moves as Keras' ``LossScaleOptimizer`` moves it:

    - a step with a non-finite grad halves the scale and resets the counter;
    - a finite step counts; the ``dynamic_growth_steps``-th finite step in a row doubles
      the scale and resets the counter.

    Design: the scale and the counter live where the params do. On the CPU they are
    numbers, updated after the step from ``inner.found_inf``. On CUDA the step is decided
    on the device (fusedopt/engine/engine.py): the scale and the counter are 0-d device arrays,
    updated from the step's device flag by array operations queued after the step, and
    the next step divides by the device scale - nothing waits for the host. Reading
    :attr:`dynamic_scale` as a number, ``found_inf`` or ``iterations`` waits for the device.

    Args:
        inner_optimizer: a fusedopt optimizer (``fusedopt.Adam(...)`` and the like).
        initial_scale: the first loss scale. 2**15 (Keras' default).
        dynamic_growth_steps: finite steps in a row after which the scale doubles. 2000.
        name: a name for the config. "loss_scale_optimizer".

    Example::

        >>> import numpy as np, fusedopt
        >>> w = np.ones(3, np.float32)
        >>> opt = fusedopt.LossScaleOptimizer(fusedopt.SGD(learning_rate=0.5),
        ...                                   initial_scale=8.0, dynamic_growth_steps=2)
        >>> g = np.array([1.0, 2.0, 4.0], np.float32) * np.float32(opt.dynamic_scale)
        >>> _ = opt.apply_gradients([(g, w)])
        >>> w, opt.dynamic_scale
        (array([ 0.5,  0. , -1. ], dtype=float32), 8.0)
        >>> _ = opt.apply_gradients([(np.array([np.inf, 0, 0], np.float32), w)])
        >>> opt.found_inf, opt.dynamic_scale, opt.iterations
        (True, 4.0, 1)
    """

    def __init__(self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000,
                 name=None):
        if not isinstance(inner_optimizer, Optimizer):
            raise TypeError(f"inner_optimizer must be a fusedopt optimizer (fusedopt.Adam(...) "
                            f"and the like), got a {type(inner_optimizer).__name__}")
        ok_scale = (isinstance(initial_scale, (int, float)) and not isinstance(initial_scale, bool)
                    and np.isfinite(initial_scale) and initial_scale > 0)
        if not ok_scale:
            raise ValueError(f"initial_scale must be a positive finite number, got "
                             f"{initial_scale!r}")
        if isinstance(dynamic_growth_steps, bool) or not isinstance(dynamic_growth_steps, int) \
                or dynamic_growth_steps < 1:
            raise ValueError(f"dynamic_growth_steps must be an int >= 1, got "
                             f"{dynamic_growth_steps!r}")
        self.inner_optimizer = inner_optimizer
        self.initial_scale = float(initial_scale)
        self.dynamic_growth_steps = dynamic_growth_steps
        self.name = name if name is not None else "loss_scale_optimizer"
        self._scale = np.float32(initial_scale)  # a device 0-d array once steps run there
        self._counter = 0

    # --- the scale ----------------------------------------------------------------------------
    @property
    def dynamic_scale(self) -> float:
        """The current loss scale (float32 values, as Keras keeps it)."""
        return float(self._scale)

    def scale_loss(self, loss):
        """``loss`` times the current scale: differentiate this, then apply the grads."""
        return loss * self._scale

    # --- the step -----------------------------------------------------------------------------
    def apply_gradients(self, grads_and_vars):
        """One step of the inner optimizer on grads that carry the current scale; then the
        scale moves (halved after a skipped step, doubled after dynamic_growth_steps
        finite ones). Returns the inner optimizer's ``iterations``."""
        result = self.inner_optimizer.apply_gradients(grads_and_vars, grad_scale=self._scale)
        flag = self.inner_optimizer._engine.last_flag()
        if flag is None:
            self._update_on_host(self.inner_optimizer.found_inf)
        else:
            self._update_on_device(flag)
        return result

    def _update_on_host(self, found_inf: bool) -> None:
        if found_inf:
            self._scale, self._counter = self._scale * np.float32(0.5), 0
        elif self._counter == self.dynamic_growth_steps - 1:
            self._scale, self._counter = self._scale * np.float32(2.0), 0
        else:
            self._counter += 1

    def _update_on_device(self, flag) -> None:
        """The same rule as array operations on the step's device flag: queued behind the
        step, read by the next one, never read here."""
        xp = _module_of(flag)
        if not isinstance(self._scale, xp.ndarray):  # once: the scale is still a number here
            self._scale = xp.asarray(np.float32(float(self._scale)))
            self._counter = xp.asarray(np.int64(int(self._counter)))
        skipped = flag.reshape(()) != 0
        grow = self._counter == self.dynamic_growth_steps - 1
        factor = xp.where(skipped, np.float32(0.5), xp.where(grow, np.float32(2.0),
                                                              np.float32(1.0)))
        self._scale = (self._scale * factor).astype(np.float32)
        self._counter = xp.where(skipped | grow, 0, self._counter + 1)

    # --- what Keras' wrapper forwards ---------------------------------------------------------
    @property
    def iterations(self) -> int:
        return self.inner_optimizer.iterations

    @property
    def found_inf(self) -> bool:
        return self.inner_optimizer.found_inf

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @property
    def variables(self) -> list:
        return self.inner_optimizer.variables

    def get_config(self) -> dict:
        inner = dict(self.inner_optimizer.get_config(),
                     class_name=type(self.inner_optimizer).__name__)
        return {"name": self.name, "inner_optimizer": inner,
                "initial_scale": self.initial_scale,
                "dynamic_growth_steps": self.dynamic_growth_steps}

    @classmethod
    def from_config(cls, config: dict):
        from .. import get
        config = dict(config)
        return cls(get(config.pop("inner_optimizer")), **config)

    def state_dict(self) -> dict:
        """The inner optimizer's state, the scale and the counter."""
        return {"inner": self.inner_optimizer.state_dict(), "dynamic_scale": self.dynamic_scale,
                "step_counter": int(self._counter)}

    def load_state_dict(self, state: dict) -> None:
        self.inner_optimizer.load_state_dict(state["inner"])
        self._scale = np.float32(state["dynamic_scale"])
        self._counter = int(state["step_counter"])


def _module_of(array):
    if isinstance(array, (np.ndarray, np.generic)):
        return np
    import cupy
    return cupy
