"""Adagrad."""

from __future__ import annotations

from .base import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer, 2011, https://jmlr.org/papers/v12/duchi11a.html), fused.

    Keras convention (default); the accumulator starts at ``initial_accumulator_value``::

        acc += g**2
        theta -= lr * g / sqrt(acc + epsilon)                 # epsilon inside the root

    ``convention="torch"`` reproduces ``torch.optim.Adagrad``: with ``t`` the 1-based step,
    ``theta -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(acc) + epsilon)`` (epsilon outside
    the root). Weight decay is L2 there (``g += wd * theta``) and decoupled in the Keras
    convention (``theta -= theta * wd * lr``, before the update). The defaults stay Keras'
    in both conventions: torch's own are ``initial_accumulator_value=0``, ``epsilon=1e-10``.

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
        initial_accumulator_value: the accumulator's starting value, >= 0. 0.1.
        epsilon: >= 0. 1e-7.
        weight_decay: None or >= 0. None.
        lr_decay: torch only, >= 0: the step size decays as ``lr / (1 + (t - 1) lr_decay)``. 0.0.
        name: Keras' name. "adagrad".
        convention: "keras" or "torch": whose formulas to reproduce.
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example (Keras' published values for one step)::

        >>> import numpy as np, fusedopt
        >>> w = np.array([1, 2, 3, 4], np.float32)
        >>> opt = fusedopt.Adagrad(learning_rate=0.5)
        >>> opt.apply_gradients([(np.array([1, 6, 7, 2], np.float32), w)])
        1
        >>> np.round(w, 4)
        array([0.5233, 1.5007, 2.5005, 3.5061], dtype=float32)
    """

    spec_name = "adagrad"

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-07,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name="adagrad", lr_decay=0.0, convention="keras", backend="auto",
                 state_dtype=None, master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate,
                         initial_accumulator_value=initial_accumulator_value, epsilon=epsilon,
                         weight_decay=weight_decay, lr_decay=lr_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         convention=convention, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
