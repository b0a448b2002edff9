"""``fusedopt demo`` with Keras: the Adam article's example in Keras 3, fusedopt doing the update.

The article builds two Dense layers (10 relu units, then 2 softmax units) on input of shape
(10, 10), compiles with ``optimizer="adam"``, prints the model summary, the optimizer's
config and the weights, and fits. Here the same, read as batches of 10 samples with 10
features (the NumPy demo's reading), on the demo's synthetic two-class data, with one line
more: ``fusedopt.keras.install()``, after which Keras' ``"adam"`` is ``fusedopt.keras.Adam``.
Keras runs on its torch backend, whose variables fusedopt updates in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import model

EPOCHS = 10
SAMPLES = 200
LOSS = "sparse_categorical_crossentropy"


def keras_ready() -> str | None:
    """None when the Keras demo can run here, else why not (the NumPy demo runs instead)."""
    import importlib.util

    for package in ("keras", "torch"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (pip install 'fusedopt[peers]')"
    backend = os.environ.get("KERAS_BACKEND", "torch")
    if backend != "torch":
        return (f"KERAS_BACKEND={backend}: fusedopt.keras needs KERAS_BACKEND=torch "
                "(unset it or set it to torch)")
    return None


def build_model(seed: int = 0, dtype=None):
    """The article's model, weights drawn from ``seed`` (Keras' own initializers)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input(shape=(model.FEATURES,), batch_size=model.BATCH)]
    layers += [keras.layers.Dense(units, activation=activation, dtype=dtype)
               for units, activation in model.LAYERS]
    return keras.Sequential(layers, name="article")


@dataclass
class KerasDemoResult:
    optimizer: str                 # the class that did the update, module included
    weights_before: list = field(default_factory=list)
    weights_after: list = field(default_factory=list)
    history: dict = field(default_factory=dict)
    max_diff_vs_keras: float | None = None


def _fit(net, data, epochs: int, verbose):
    # Shuffled as fit does by default, from the seed set in build_model: the same order for
    # every model built from the same seed.
    return net.fit(data.x, data.y, batch_size=model.BATCH, epochs=epochs, verbose=verbose)


def run_keras_demo(name: str = "adam", epochs: int = EPOCHS, samples: int = SAMPLES,
                   seed: int = 0, compare: bool = False, say=print) -> KerasDemoResult:
    """Train the article's model with ``model.compile(optimizer=name)`` after install()."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    import fusedopt.keras

    if samples % model.BATCH:
        raise ValueError(f"--samples must be a multiple of the batch size {model.BATCH} (the "
                         f"article's input is ({model.BATCH}, {model.FEATURES})), got {samples}")
    data = model.make_data(samples, seed)
    say(f"Keras {keras.__version__} ({keras.backend.backend()} backend). After "
        f"fusedopt.keras.install(),\nmodel.compile(optimizer={name!r}) gives fusedopt's "
        "optimizer.\n")
    fusedopt.keras.install()
    keras.backend.clear_session()  # a fresh session: the layers get the article's names
    try:
        net = build_model(seed)
        net.compile(optimizer=name, loss=LOSS, metrics=["accuracy"])
    finally:
        fusedopt.keras.uninstall()
    net.summary(print_fn=lambda line, *args, **kwargs: say(line))
    optimizer = net.optimizer
    kind = f"{type(optimizer).__module__.replace('.optimizers', '')}.{type(optimizer).__name__}"
    result = KerasDemoResult(kind, [w.copy() for w in net.get_weights()])
    say(f"\nmodel.optimizer is {kind}; model.optimizer.get_config():")
    for key, value in optimizer.get_config().items():
        say(f"  {key}: {value!r}")
    _print_weights(say, net, "before training")
    say(f"\nmodel.fit(x, y, batch_size={model.BATCH}, epochs={epochs}) on {samples} samples:")
    result.history = _fit(net, data, epochs, verbose=1).history
    result.weights_after = [w.copy() for w in net.get_weights()]
    _print_weights(say, net, f"after {epochs} epochs ({optimizer.iterations.numpy()} steps)")
    if compare:
        twin = build_model(seed)
        twin.compile(optimizer=keras.optimizers.get({"class_name": name, "config": {}}),
                     loss=LOSS, metrics=["accuracy"])
        _fit(twin, data, epochs, verbose=0)
        result.max_diff_vs_keras = max(float(np.max(np.abs(a - b))) for a, b in
                                       zip(result.weights_after, twin.get_weights()))
        say(f"\nlargest weight difference vs {type(twin.optimizer).__name__} of Keras itself "
            f"(same seed, data and batches): {result.max_diff_vs_keras:.3e}")
    return result


def _print_weights(say, net, when: str) -> None:
    say(f"\nweights {when}:")
    for variable in net.weights:
        value = np.asarray(variable.numpy())
        text = np.array2string(value, precision=3, suppress_small=True, max_line_width=78)
        say(f"{variable.path} {value.shape}:\n{text}")
