"""The demo's model, written with array operations only (NumPy, or CuPy on a GPU).

The Keras Adam article's example: two dense layers, 10 relu units then 2 softmax units,
on input of shape (10, 10) - read here as batches of 10 samples with 10 features each.
Loss: mean cross-entropy of the softmax output against integer labels. Gradients by hand:

    h = relu(x W1 + b1),   p = softmax(h W2 + b2),   L = -mean(log p[y])
    dz = (p - onehot(y)) / B;  dW2 = h^T dz;  db2 = sum(dz);  dh = (dz W2^T) * (h > 0)
    dW1 = x^T dh;  db1 = sum(dh)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = 10
BATCH = 10
#: (units, activation) of each dense layer.
LAYERS = ((10, "relu"), (2, "softmax"))
#: Smallest probability the loss takes the log of (Keras clips at the same epsilon).
PROB_FLOOR = 1e-7


@dataclass
class Data:
    x: np.ndarray   # (samples, FEATURES) float32
    y: np.ndarray   # (samples,) int64, in [0, 2)


def make_data(samples: int, seed: int) -> Data:
    """Two classes split by a random hyperplane through a Gaussian cloud, 10% labels flipped."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, FEATURES)).astype(np.float32)
    normal = rng.standard_normal(FEATURES)
    y = (x @ normal > 0).astype(np.int64)
    flip = rng.random(samples) < 0.1
    y[flip] = 1 - y[flip]
    return Data(x, y)


def init_params(seed: int) -> list[np.ndarray]:
    """[W1, b1, W2, b2] as Keras' Dense initializes them: Glorot-uniform kernels, zero biases."""
    rng = np.random.default_rng(seed + 1)
    params, fan_in = [], FEATURES
    for units, _ in LAYERS:
        limit = np.sqrt(6.0 / (fan_in + units))
        params.append(rng.uniform(-limit, limit, (fan_in, units)).astype(np.float32))
        params.append(np.zeros(units, np.float32))
        fan_in = units
    return params


def summary() -> list[tuple[str, str, int]]:
    """(layer, output shape, params) rows, Keras' model.summary() style, for one batch."""
    rows, fan_in = [], FEATURES
    for i, (units, activation) in enumerate(LAYERS):
        name = "dense" if i == 0 else f"dense_{i}"
        rows.append((f"{name} (Dense, {activation})", f"({BATCH}, {units})",
                     fan_in * units + units))
        fan_in = units
    return rows


def forward(xp, params, x):
    w1, b1, w2, b2 = params
    h = xp.maximum(x @ w1 + b1, 0)
    z = h @ w2 + b2
    z = z - z.max(axis=1, keepdims=True)  # shift: exp cannot overflow, softmax unchanged
    e = xp.exp(z)
    return h, e / e.sum(axis=1, keepdims=True)


def loss_and_accuracy(xp, params, x, y) -> tuple[float, float]:
    _, p = forward(xp, params, x)
    picked = p[xp.arange(y.shape[0]), y]
    loss = -xp.log(xp.maximum(picked, PROB_FLOOR)).mean()
    return float(loss), float((p.argmax(axis=1) == y).mean())


def gradients(xp, params, x, y):
    """Loss of the batch and the gradient of each param, same order as ``params``."""
    w1, b1, w2, b2 = params
    h, p = forward(xp, params, x)
    rows = xp.arange(y.shape[0])
    loss = -xp.log(xp.maximum(p[rows, y], PROB_FLOOR)).mean()
    dz = p.copy()
    dz[rows, y] -= 1
    dz /= y.shape[0]
    dh = (dz @ w2.T) * (h > 0)
    grads = [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]
    return float(loss), [g.astype(w.dtype, copy=False) for g, w in zip(grads, params)], p
