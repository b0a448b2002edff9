"""fusedopt.keras optimizers print, serialize, save and load as Keras' own classes do."""

import keras
import numpy as np
import pytest
from keras_fit import build_model, data, fit, max_diff, variables, weights
from test_keras_conformance import NAMES

import fusedopt.keras


@pytest.mark.parametrize("name", NAMES)
def test_config_is_keras_config(name):
    ours, theirs = getattr(fusedopt.keras, name)(), getattr(keras.optimizers, name)()
    config = ours.get_config()
    assert config == theirs.get_config() | {"name": config["name"]}  # names are per instance
    assert list(config) == list(theirs.get_config())  # and in Keras' order
    again = type(ours).from_config(config)
    assert type(again) is type(ours) and again.get_config() == config
    pinned = type(ours)(backend="cpu").get_config()
    assert pinned["backend"] == "cpu" and type(ours).from_config(pinned).get_config() == pinned


@pytest.mark.parametrize("name", NAMES)
def test_serialized_by_registered_name(name):
    serialized = keras.optimizers.serialize(getattr(fusedopt.keras, name)(learning_rate=0.05))
    assert serialized["registered_name"] == f"fusedopt>{name}"
    restored = keras.optimizers.deserialize(serialized)
    assert type(restored) is getattr(fusedopt.keras, name)
    assert restored.get_config()["learning_rate"] == pytest.approx(0.05)


def _built(optimizer):
    keras.backend.clear_session()  # the same layer names for every model built here
    net = build_model(0)
    optimizer.build(net.trainable_variables)
    return optimizer


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", dict(amsgrad=True, use_ema=True)), ("SGD", dict(momentum=0.9)),
    ("RMSprop", dict(momentum=0.5, centered=True)), ("Nadam", {}),
    ("Adam", dict(gradient_accumulation_steps=3)),
])
def test_variables_are_keras_variables(name, kwargs):
    """What model.save stores: Keras' variables, names, shapes and order; the fused step's
    state arrays are those variables' tensors."""
    ours = _built(getattr(fusedopt.keras, name)(**kwargs))
    theirs = _built(getattr(keras.optimizers, name)(**kwargs))
    layout = lambda opt: [(v.path.split("/")[-1], tuple(v.shape), v.dtype)  # noqa: E731
                          for v in opt.variables]
    assert layout(ours) == layout(theirs)
    memory = {v.value.data_ptr() for v in ours.variables}
    engine = ours._fused.engine
    assert all(s.data_ptr() in memory for slots in engine.states for s in slots)
    assert len(engine.states) == len(ours._trainable_variables)


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", dict(amsgrad=True)), ("Nadam", {}),
    ("SGD", dict(momentum=0.9, nesterov=True)), ("RMSprop", dict(centered=True, momentum=0.5)),
    ("AdamW", dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.001, 10, 0.5))),
])
def test_save_load_continues_as_an_uninterrupted_fit(tmp_path, name, kwargs):
    make = lambda: getattr(fusedopt.keras, name)(**kwargs)  # noqa: E731
    train = data()
    uninterrupted = fit(make(), epochs=5, train=train)
    first = fit(make(), epochs=3, train=train)
    first.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is getattr(fusedopt.keras, name)
    assert int(loaded.optimizer.iterations) == 15
    assert max_diff(list(variables(loaded.optimizer).values()),
                    list(variables(first.optimizer).values())) == 0.0
    loaded.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    assert int(loaded.optimizer.iterations) == 25
    assert max_diff(weights(loaded), weights(uninterrupted)) == 0.0
    assert max_diff(list(variables(loaded.optimizer).values()),
                    list(variables(uninterrupted.optimizer).values())) == 0.0


def test_save_load_with_ema_resumes_as_keras_does(tmp_path):
    """fit() ends by overwriting the weights with their averages (use_ema), so a fit cut in
    two is not an uninterrupted one, in Keras either: fusedopt's resumes as Keras' does, and
    the averages are saved and restored."""
    train = data()
    resumed = []
    for cls in (fusedopt.keras.Adam, keras.optimizers.Adam):
        first = fit(cls(use_ema=True), epochs=3, train=train)
        first.save(tmp_path / f"{cls.__module__}.keras")
        loaded = keras.saving.load_model(tmp_path / f"{cls.__module__}.keras")
        averages = [np.asarray(a.numpy()) for a in loaded.optimizer._model_variables_moving_average]
        saved = [np.asarray(a.numpy()) for a in first.optimizer._model_variables_moving_average]
        assert max_diff(averages, saved) == 0.0
        loaded.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
        resumed.append(weights(loaded))
    assert max_diff(*resumed) < 1e-6


def test_a_keras_checkpoint_restores_into_fusedopt(tmp_path):
    """The variables are Keras' own, so Keras' Adam's checkpoint continues in fusedopt's."""
    train = data()
    theirs = fit(keras.optimizers.Adam(), epochs=3, train=train)
    theirs.save_weights(tmp_path / "w.weights.h5")
    ours_net = build_model(0)
    ours_net.compile(optimizer=fusedopt.keras.Adam(), loss="sparse_categorical_crossentropy")
    ours_net.optimizer.build(ours_net.trainable_variables)
    ours_net.load_weights(tmp_path / "w.weights.h5")
    assert int(ours_net.optimizer.iterations) == 15
    ours_net.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    theirs.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    assert max_diff(weights(ours_net), weights(theirs)) < 1e-6
