"""Adadelta."""

from __future__ import annotations

from .base import Optimizer


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012, https://arxiv.org/abs/1212.5701), fused.

    Both conventions::

        Eg = rho * Eg + (1 - rho) * g**2
        d = sqrt(Ed + epsilon) / sqrt(Eg + epsilon) * g
        Ed = rho * Ed + (1 - rho) * d**2
        theta -= lr * d

    ``convention="torch"`` reproduces ``torch.optim.Adadelta``: the same update, with L2
    weight decay (``g += wd * theta``); in the Keras convention weight decay is decoupled
    (``theta -= theta * wd * lr``, before the update). The defaults stay Keras' in both
    conventions: torch's own are ``learning_rate=1.0``, ``rho=0.9``, ``epsilon=1e-6``.

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
        rho: decay of both running averages, in [0, 1). 0.95.
        epsilon: >= 0. 1e-7.
        weight_decay: None or >= 0. None.
        name: Keras' name. "adadelta".
        convention: "keras" or "torch": whose formulas to reproduce.
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example::

        >>> import numpy as np, fusedopt
        >>> w = np.zeros(2, np.float32)
        >>> opt = fusedopt.Adadelta(learning_rate=1.0, rho=0.0, epsilon=1.0)
        >>> opt.apply_gradients([(np.array([0.0, 3.0], np.float32), w)])
        1
        >>> np.round(w, 6)   # d = sqrt(0 + 1) / sqrt(g**2 + 1) * g = 3 / sqrt(10)
        array([ 0.      , -0.948683], dtype=float32)
    """

    spec_name = "adadelta"

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-07, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="adadelta",
                 convention="keras", backend="auto",
                 state_dtype=None, master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate, rho=rho, epsilon=epsilon,
                         weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, convention=convention,
                         backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
