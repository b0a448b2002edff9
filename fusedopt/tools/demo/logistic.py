"""Logistic regression trained with 16-bit weights: where round to nearest stalls.

Full-batch Adam on a synthetic problem whose true weights are of order 1: once a weight
is past about 0.25, an Adam step (about the learning rate) is below half a bfloat16 ulp,
so a bfloat16 weight rounded to nearest stops moving, while float32 goes on. Stochastic
rounding and Kahan summation keep the small steps. The forward and backward passes run in
float32 on the weights as stored (``w.astype(float32)``): only the optimizer's stores are
16-bit. Used by benchmarks/pure_bf16_training.py (the loss curves) and the test suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Samples, features, steps and learning rate of the standard problem.
SAMPLES, FEATURES, STEPS, LEARNING_RATE = 8192, 32, 1500, 3e-3

#: The runs compared: name -> (param dtype, optimizer options).
RUNS = {
    "float32": ("float32", {}),
    "bfloat16, round to nearest": ("bfloat16", {"state_dtype": "bfloat16"}),
    "bfloat16, stochastic rounding": ("bfloat16", {"state_dtype": "bfloat16",
                                                   "stochastic_rounding": True}),
    "bfloat16, Kahan summation": ("bfloat16", {"state_dtype": "bfloat16",
                                               "kahan_summation": True}),
}


@dataclass
class Problem:
    x: np.ndarray       # (samples, features) float32
    y: np.ndarray       # (samples,) float32 labels in {0, 1}
    w_true: np.ndarray  # (features,) float64


def make_problem(samples: int = SAMPLES, features: int = FEATURES, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features)).astype(np.float32)
    w_true = rng.standard_normal(features) * 1.5
    y = (rng.random(samples) < 1 / (1 + np.exp(-(x @ w_true)))).astype(np.float32)
    return Problem(x, y, w_true)


def loss_and_grad(problem: Problem, w) -> tuple[float, np.ndarray]:
    """Mean binary cross-entropy and its gradient, in float32, at the stored weights."""
    x, y = problem.x, problem.y
    z = x @ w.astype(np.float32)
    # log(1 + e^z) - y z, computed stably
    loss = float(np.mean(np.logaddexp(0, z) - y * z))
    p = (1 / (1 + np.exp(-z))).astype(np.float32)
    return loss, (x.T @ (p - y) / np.float32(len(y))).astype(np.float32)


def train(problem: Problem, dtype: str, steps: int = STEPS, learning_rate: float = LEARNING_RATE,
          backend: str = "cpu", seed: int = 0, **options) -> list[float]:
    """The loss before each step and after the last, training from zero weights with
    fusedopt.Adam on ``dtype`` weights (``options``: its storage arguments)."""
    import fusedopt
    from fusedopt.memory.storage import numpy_dtype

    w = np.zeros(problem.x.shape[1], numpy_dtype(dtype))
    opt = fusedopt.Adam(learning_rate=learning_rate, backend=backend, seed=seed, **options)
    losses = []
    for _ in range(steps):
        loss, g = loss_and_grad(problem, w)
        losses.append(loss)
        opt.apply_gradients([(g.astype(w.dtype), w)])
    losses.append(loss_and_grad(problem, w)[0])
    return losses
