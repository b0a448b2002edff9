"""The article's model fitted by real Keras 3 (torch backend): what the Keras tests compare.

Two fits from the same seed see the same initial weights (Keras' initializers after
``keras.utils.set_random_seed``), the same data and the same batches (no shuffling), so
they differ only by the optimizer that applied the updates.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fusedopt.tools.demo import model as article  # noqa: E402
from fusedopt.tools.demo.keras_article import LOSS, build_model  # noqa: E402

EPOCHS = 5
#: 5 batches of 10 an epoch: 25 optimizer steps in 5 epochs.
SAMPLES = 50


def data(samples: int = SAMPLES, seed: int = 0):
    return article.make_data(samples, seed)


def fit(optimizer, epochs: int = EPOCHS, samples: int = SAMPLES, seed: int = 0, policy=None,
        callbacks=None, train=None, net=None):
    """A fresh article model (or ``net``) compiled with ``optimizer`` and fitted; ``policy``:
    the global dtype policy the model is built and compiled under ("mixed_float16"...)."""
    if net is None:
        keras.backend.clear_session()  # layer names restart: every fresh model's are equal
        if policy is not None:
            keras.config.set_dtype_policy(policy)
        try:
            net = build_model(seed)
        finally:
            keras.config.set_dtype_policy("float32")
    net.compile(optimizer=optimizer, loss=LOSS, metrics=["accuracy"])
    train = data(samples, seed) if train is None else train
    net.fit(train.x, train.y, batch_size=article.BATCH, epochs=epochs, shuffle=False,
            verbose=0, callbacks=callbacks)
    return net


def weights(net) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float64) for w in net.get_weights()]


def max_diff(a, b) -> float:
    assert len(a) == len(b)
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(a, b))


def variables(optimizer) -> dict[str, np.ndarray]:
    """Every optimizer variable by path, as NumPy (what model.save stores)."""
    return {v.path: np.asarray(keras.ops.convert_to_numpy(v), dtype=np.float64)
            for v in optimizer.variables}
