"""Lion."""

from __future__ import annotations

from .base import Optimizer


class Lion(Optimizer):
    r"""Lion, evolved sign momentum (Chen et al., 2023, https://arxiv.org/abs/2302.06675), fused.

    Keras convention (default)::

        c = beta_1 * m + (1 - beta_1) * g
        theta -= lr * sign(c)                 # sign(0) = 0
        m = beta_2 * m + (1 - beta_2) * g

    with ``weight_decay`` applied first as ``theta -= theta * wd * lr``.

    PyTorch has no Lion, so ``convention="torch"`` runs the same rule (what a user
    porting a torch Lion implementation expects) with the decoupled weight decay of the
    paper and of torch's AdamW, ``theta *= 1 - lr * wd``: equal to Keras' up to rounding.

    Every step moves each weight by exactly ``lr`` (plus decay), so Lion wants a learning
    rate 3-10x smaller than Adam's.

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
        beta_1: interpolation of the update direction, in (0, 1]. 0.9.
        beta_2: decay of the momentum, in [0, 1]. 0.99.
        weight_decay: None or >= 0. None.
        clipnorm, clipvalue, global_clipnorm: Keras' gradient clipping (at most one).
        name: Keras' name. "lion".
        convention: "keras" or "torch" (see above).
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example::

        >>> import numpy as np, fusedopt
        >>> w = np.zeros(3, np.float32)
        >>> opt = fusedopt.Lion(learning_rate=0.25)
        >>> opt.apply_gradients([(np.array([3, -0.5, 0], np.float32), w)])
        1
        >>> w
        array([-0.25,  0.25,  0.  ], dtype=float32)
    """

    spec_name = "lion"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name="lion",
                 convention="keras", backend="auto",
                 state_dtype=None, master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, convention=convention,
                         backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
