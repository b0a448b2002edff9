"""Adam and AdamW."""

from __future__ import annotations

from .base import Optimizer


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980), fused.

    Keras convention (default), with ``t`` the 1-based step::

        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m += (g - m) * (1 - beta_1)
        v += (g**2 - v) * (1 - beta_2)
        theta -= m * alpha / (sqrt(v) + epsilon)          # v -> max(vhat, v) with amsgrad

    ``convention="torch"`` uses ``torch.optim.Adam``'s formulas: epsilon is added to
    ``sqrt(v) / sqrt(1 - beta_2**t)`` and ``weight_decay`` is L2 (``g += wd * theta``);
    in the Keras convention weight decay is decoupled (``theta -= theta * wd * lr``).

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001.
        beta_1: decay of the first moment, in [0, 1). 0.9.
        beta_2: decay of the second moment, in [0, 1). 0.999.
        epsilon: added to the denominator, >= 0. 1e-7 (torch's own default is 1e-8).
        amsgrad: keep the running maximum of v (Reddi et al., 2018). False.
        weight_decay: None or >= 0. None.
        name: Keras' name. "adam".
        convention: "keras" or "torch": whose formulas to reproduce.
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example::

        >>> import numpy as np, fusedopt
        >>> w = np.ones(4, np.float32)
        >>> opt = fusedopt.Adam(learning_rate=0.5)
        >>> opt.apply_gradients([(np.array([1, 6, 7, 2], np.float32), w)])
        1
        >>> w.round(4)
        array([0.5, 0.5, 0.5, 0.5], dtype=float32)
    """

    spec_name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adam", convention="keras", backend="auto",
                 state_dtype=None,
                 master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                         name=name, convention=convention, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)


class AdamW(Optimizer):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), fused.

    Keras convention: ``theta -= theta * weight_decay * lr`` before the Adam update.
    ``convention="torch"``: ``theta *= 1 - lr * weight_decay``, then torch's Adam update,
    as ``torch.optim.AdamW``. Arguments as :class:`Adam`; ``weight_decay`` defaults to
    0.004 (Keras; torch's default is 0.01) and ``name`` to "adam_w".
    """

    spec_name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-07, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name="adam_w", convention="keras", backend="auto",
                 state_dtype=None,
                 master_weights=False, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                         name=name, convention=convention, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
