"""Adamax."""

from __future__ import annotations

from .base import Optimizer


class Adamax(Optimizer):
    r"""Adamax, Adam with the infinity norm (Kingma & Ba, 2015, section 7.1), fused.

    Keras convention (default), with ``t`` the 1-based step::

        m += (g - m) * (1 - beta_1)
        u = max(beta_2 * u, |g|)
        theta -= lr * m / ((1 - beta_1**t) * (u + epsilon))

    ``convention="torch"`` reproduces ``torch.optim.Adamax``: epsilon goes inside the max,
    ``u = max(beta_2 * u, |g| + epsilon)``, then ``theta -= lr / (1 - beta_1**t) * m / u``;
    ``weight_decay`` is L2 there (``g += wd * theta``) and decoupled in Keras
    (``theta -= theta * wd * lr`` before the update).

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001
            (torch's own default is 0.002).
        beta_1: decay of the first moment, in [0, 1). 0.9.
        beta_2: decay of the infinity norm, in [0, 1). 0.999.
        epsilon: >= 0. 1e-7 (torch's own default is 1e-8).
        weight_decay: None or >= 0. None.
        clipnorm, clipvalue, global_clipnorm: Keras' gradient clipping (at most one).
        name: Keras' name. "adamax".
        convention: "keras" or "torch": whose formulas to reproduce.
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example::

        >>> import numpy as np, fusedopt
        >>> w = np.ones(2, np.float32)
        >>> opt = fusedopt.Adamax(learning_rate=0.5, epsilon=0.0)
        >>> opt.apply_gradients([(np.array([2, -4], np.float32), w)])
        1
        >>> w
        array([0.5, 1.5], dtype=float32)
    """

    spec_name = "adamax"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name="adamax", convention="keras", backend="auto",
                 state_dtype=None, master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, weight_decay=weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         convention=convention, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
