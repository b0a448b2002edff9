"""RMSprop, plain, centered and with momentum."""

from __future__ import annotations

from .base import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (Hinton, Coursera lecture 6e, 2012), fused; centered as in Graves (2013).

    Keras convention (default)::

        v = rho * v + (1 - rho) * g**2
        ms = v - gbar**2, gbar = rho * gbar + (1 - rho) * g   # centered
        ms = v                                                # otherwise
        inc = lr * g / sqrt(ms + epsilon)                     # epsilon inside the root
        mom = momentum * mom + inc; theta -= mom              # momentum > 0
        theta -= inc                                          # otherwise

    ``convention="torch"`` reproduces ``torch.optim.RMSprop`` (whose ``alpha`` is ``rho``
    here): ``avg = sqrt(ms) + epsilon`` (epsilon outside the root), then with momentum
    ``b = momentum * b + g / avg; theta -= lr * b``, else ``theta -= lr * g / avg``. Weight
    decay is L2 there (``g += wd * theta``) and decoupled in the Keras convention
    (``theta -= theta * wd * lr``, before the update).

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
        rho: decay of the mean square (torch's ``alpha``), in [0, 1). 0.9 (torch: 0.99).
        momentum: in [0, 1); 0 keeps no momentum buffer. 0.0.
        epsilon: >= 0. 1e-7 (torch's own default is 1e-8).
        centered: divide by the estimated variance instead of the mean square. False.
        weight_decay: None or >= 0. None.
        name: Keras' name. "rm_sprop".
        convention: "keras" or "torch": whose formulas to reproduce.
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example (Keras' published values for one step)::

        >>> import numpy as np, fusedopt
        >>> w = np.array([1, 2, 3, 4], np.float32)
        >>> opt = fusedopt.RMSprop(learning_rate=0.5)
        >>> opt.apply_gradients([(np.array([1, 6, 7, 2], np.float32), w)])
        1
        >>> np.round(w, 4)
        array([-0.5811,  0.4189,  1.4189,  2.4189], dtype=float32)
    """

    spec_name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="rm_sprop", convention="keras", backend="auto",
                 state_dtype=None,
                 master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate, rho=rho, momentum=momentum,
                         epsilon=epsilon, centered=centered, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                         name=name, convention=convention, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
