"""SGD, with or without (Nesterov) momentum."""

from __future__ import annotations

from .base import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional (Nesterov) momentum, fused.

    Keras convention (default), ``mu`` = ``momentum``::

        theta -= lr * g                                   # momentum == 0
        m = mu * m - lr * g                               # momentum > 0
        theta += m                                        # or, nesterov: theta += mu * m - lr * g

    ``convention="torch"`` reproduces ``torch.optim.SGD``: the buffer is ``b = g`` on its first
    step and ``b = mu * b + (1 - dampening) * g`` after; ``theta -= lr * (g + mu * b)`` with
    nesterov, else ``theta -= lr * b``. Weight decay is L2 there (``g += wd * theta``) and
    decoupled in the Keras convention (``theta -= theta * wd * lr``, before the update).
    The first step is counted by the optimizer (``iterations``): a param that gets its first
    gradient later takes ``1 - dampening`` at once (the same unless ``dampening`` is set).

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.01.
        momentum: in [0, 1); 0 keeps no state. 0.0.
        nesterov: Nesterov momentum (Sutskever et al., 2013). False. With the torch
            convention it needs momentum > 0 and dampening == 0.
        weight_decay: None or >= 0. None.
        dampening: torch only, in [0, 1]: the buffer takes ``(1 - dampening) * g``. 0.0.
        name: Keras' name. "sgd".
        convention: "keras" or "torch": whose formulas to reproduce.
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example::

        >>> import numpy as np, fusedopt
        >>> w = np.ones(3, np.float32)
        >>> opt = fusedopt.SGD(learning_rate=0.5)
        >>> opt.apply_gradients([(np.array([1, 2, 4], np.float32), w)])
        1
        >>> w
        array([ 0.5,  0. , -1. ], dtype=float32)
    """

    spec_name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="sgd",
                 dampening=0.0, convention="keras", backend="auto",
                 state_dtype=None, master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         weight_decay=weight_decay, dampening=dampening, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         convention=convention, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
