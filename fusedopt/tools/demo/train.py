"""Training loops of the demo: fusedopt (fused or unfused backend) and, to compare, Keras."""

from __future__ import annotations

import numpy as np

from . import model


def array_module():
    """CuPy when the CUDA backend can run here, else NumPy."""
    from ..bench.machine import cuda_status

    if cuda_status()[0]:
        import cupy
        return cupy
    return np


def to_host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def train(optimizer, params, data, epochs: int, on_epoch=None):
    """Mini-batch training of a copy of ``params``, batches in order (no shuffling).

    ``on_epoch(epoch, mean_batch_loss, accuracy)`` is called after each epoch.
    """
    xp = array_module()
    params = [xp.array(p, copy=True) for p in params]  # the caller's weights stay as given
    x, y = xp.asarray(data.x), xp.asarray(data.y)
    for epoch in range(1, epochs + 1):
        losses, correct = [], 0
        for start in range(0, x.shape[0], model.BATCH):
            xb, yb = x[start:start + model.BATCH], y[start:start + model.BATCH]
            loss, grads, p = model.gradients(xp, params, xb, yb)
            optimizer.apply_gradients(zip(grads, params))
            losses.append(loss)
            correct += int((p.argmax(axis=1) == yb).sum())
        if on_epoch is not None:
            on_epoch(epoch, float(np.mean(losses)), correct / x.shape[0])
    return [to_host(p) for p in params]  # NumPy: the trained copies; CuPy: host copies


def keras_config(optimizer) -> tuple[str, dict]:
    """Keras class name and config equal to a fusedopt optimizer's."""
    config = {k: v for k, v in optimizer.get_config().items()
              if k not in ("convention", "backend")}
    return type(optimizer).__name__, config


def train_keras(optimizer, params, data, epochs: int):
    """The same model, weights, data, batches and optimizer config, trained by Keras.

    Returns the trained params, or raises ImportError without Keras.
    """
    import keras

    class_name, config = keras_config(optimizer)
    keras_opt = keras.optimizers.get({"class_name": class_name, "config": config})
    layers = [keras.Input(shape=(model.FEATURES,))]
    layers += [keras.layers.Dense(units, activation=act) for units, act in model.LAYERS]
    net = keras.Sequential(layers)
    for i, layer in enumerate(net.layers):
        layer.set_weights([params[2 * i], params[2 * i + 1]])
    net.compile(optimizer=keras_opt, loss="sparse_categorical_crossentropy")
    net.fit(data.x, data.y, batch_size=model.BATCH, epochs=epochs, shuffle=False, verbose=0)
    return [np.asarray(w) for layer in net.layers for w in layer.get_weights()]
