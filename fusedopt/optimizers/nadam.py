"""Nadam (torch: NAdam)."""

from __future__ import annotations

from .base import Optimizer


class Nadam(Optimizer):
    r"""Nadam, Adam with Nesterov momentum (Dozat, 2016), fused.

    Keras convention (default), with ``t`` the 1-based step, a momentum schedule
    ``mu_t = beta_1 * (1 - 0.5 * 0.96**t)`` and its running product
    ``P_t = mu_1 * ... * mu_t`` (Keras' ``u_product``)::

        m += (g - m) * (1 - beta_1)
        v += (g**2 - v) * (1 - beta_2)
        m_hat = mu_{t+1} * m / (1 - P_{t+1}) + (1 - mu_t) * g / (1 - P_t)
        theta -= lr * m_hat / (sqrt(v / (1 - beta_2**t)) + epsilon)

    ``convention="torch"`` reproduces ``torch.optim.NAdam``: the same update with
    ``mu_t = beta_1 * (1 - 0.5 * 0.96**(t * momentum_decay))``, applied as two steps
    ``theta -= lr (1 - mu_t) / (1 - P_t) * g / d`` and
    ``theta -= lr mu_{t+1} / (1 - P_{t+1}) * m / d`` with ``d = sqrt(v_hat) + epsilon``;
    ``weight_decay`` is L2 there (``g += wd * theta``), or ``theta *= 1 - lr * wd`` with
    ``decoupled_weight_decay=True``. In Keras it is ``theta -= theta * wd * lr``.

    ``P_t`` is computed from ``t`` alone each step (not carried as state), so a state
    dict holds nothing but m and v per param and restores exactly.

    Args:
        learning_rate: step size, or a callable of ``iterations`` (a schedule). 0.001
            (torch's own default is 0.002).
        beta_1: momentum, in [0, 1). 0.9.
        beta_2: decay of the second moment, in [0, 1). 0.999.
        epsilon: >= 0. 1e-7 (torch's own default is 1e-8).
        weight_decay: None or >= 0. None.
        momentum_decay: torch convention only, psi above, >= 0. 0.004.
        decoupled_weight_decay: torch convention only. False.
        clipnorm, clipvalue, global_clipnorm: Keras' gradient clipping (at most one).
        name: Keras' name. "nadam".
        convention: "keras" or "torch": whose formulas to reproduce.
        backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
        state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
            params and state are kept (fusedopt.Optimizer).

    Example::

        >>> import numpy as np, fusedopt
        >>> w = np.zeros(3, np.float32)
        >>> opt = fusedopt.Nadam(learning_rate=0.1)
        >>> opt.apply_gradients([(np.array([1, -1, 0], np.float32), w)])
        1
        >>> np.round(w, 4)
        array([-0.1063,  0.1063,  0.    ], dtype=float32)
    """

    spec_name = "nadam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name="nadam", convention="keras", backend="auto", momentum_decay=4e-3,
                 decoupled_weight_decay=False, state_dtype=None, master_weights=False,
                 **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, weight_decay=weight_decay,
                         momentum_decay=momentum_decay,
                         decoupled_weight_decay=decoupled_weight_decay, clipnorm=clipnorm,
                         clipvalue=clipvalue, global_clipnorm=global_clipnorm, name=name,
                         convention=convention, backend=backend,
                         state_dtype=state_dtype, master_weights=master_weights, **kwargs)
