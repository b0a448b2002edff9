"""A model compiled by Keras' name after ``install()`` saves as Keras' own optimizer: the file
loads where fusedopt is absent and continues with Keras' class. A model whose optimizer needs
fusedopt saves as fusedopt's, and loading it without fusedopt says what to import."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras_fit import data, fit, max_diff, variables, weights
from tolerances import KERAS_FIT

import fusedopt.keras

#: Runs in a fresh interpreter where ``import fusedopt`` fails, as where it is not installed.
WITHOUT_FUSEDOPT = """
import json, sys
sys.modules["fusedopt"] = None  # any import of fusedopt raises ImportError
import keras, numpy as np
path, out = sys.argv[1], sys.argv[2]
try:
    net = keras.saving.load_model(path)
except Exception as error:
    json.dump({"error": f"{type(error).__name__}: {error}"}, open(out, "w"))
    raise SystemExit(0)
optimizer = net.optimizer
record = {"class": f"{type(optimizer).__module__}.{type(optimizer).__name__}",
          "iterations": int(optimizer.iterations),
          "variables": [np.asarray(v.numpy()).tolist() for v in optimizer.variables]}
train = np.load(path + ".data.npz")
net.fit(train["x"], train["y"], batch_size=10, epochs=2, shuffle=False, verbose=0)
record["weights"] = [w.tolist() for w in net.get_weights()]
record["iterations_after"] = int(optimizer.iterations)
assert not any(m == "fusedopt" or m.startswith("fusedopt.") for m in sys.modules
               if sys.modules[m] is not None)
json.dump(record, open(out, "w"))
"""


def _load_without_fusedopt(path, train) -> dict:
    np.savez(str(path) + ".data.npz", x=train.x, y=train.y)
    out = path.parent / "loaded.json"
    env = dict(os.environ, KERAS_BACKEND="torch")
    done = subprocess.run([sys.executable, "-c", WITHOUT_FUSEDOPT, str(path), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture
def installed():
    fusedopt.keras.install()
    yield
    fusedopt.keras.uninstall()


def test_a_model_compiled_by_name_saves_as_keras_and_continues_anywhere(installed, tmp_path):
    train = data()
    first = fit("adam", epochs=3, train=train)
    assert isinstance(first.optimizer, fusedopt.keras.Adam)
    assert first.optimizer._fused.engine.iterations == 15  # fusedopt did the updates
    first.save(tmp_path / "m.keras")
    loaded = _load_without_fusedopt(tmp_path / "m.keras", train)
    assert loaded["class"].startswith("keras.") and loaded["class"].endswith(".Adam")
    assert loaded["iterations"] == 15
    saved = list(variables(first.optimizer).values())  # Keras' variables, in Keras' order
    assert len(loaded["variables"]) == len(saved)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(loaded["variables"], saved))
    assert loaded["iterations_after"] == 25
    # where fusedopt is imported and installed the file names Keras' class all the same
    here = keras.saving.load_model(tmp_path / "m.keras")
    assert type(here.optimizer).__module__.startswith("keras.")
    # as if Keras' own Adam had done all 25 steps
    fusedopt.keras.uninstall()
    theirs = fit(keras.optimizers.Adam(), epochs=5, train=train)
    assert type(theirs.optimizer).__module__.startswith("keras.")
    assert max_diff([np.asarray(w) for w in loaded["weights"]], weights(theirs)) < KERAS_FIT


def test_the_saved_config_is_keras_config(installed, tmp_path):
    for name in ("adam", "sgd", "rmsprop", "adamw", "nadam", "lion"):
        ours = keras.optimizers.get({"class_name": name, "config": {"learning_rate": 0.05}})
        theirs = keras.optimizers.serialize(
            getattr(keras.optimizers, type(ours).__name__)(learning_rate=0.05))
        serialized = keras.optimizers.serialize(ours)
        assert serialized["module"] == "keras.optimizers"
        assert serialized["registered_name"] is None
        assert serialized["config"] | {"name": None} == theirs["config"] | {"name": None}


@pytest.mark.parametrize("config", [{"backend": "cpu"},
                                    {"stochastic_rounding": True, "seed": 3}])
def test_an_optimizer_that_needs_fusedopt_saves_as_fusedopt(installed, config):
    optimizer = keras.optimizers.get({"class_name": "adam", "config": dict(config)})
    assert type(optimizer) is fusedopt.keras.Adam
    serialized = keras.optimizers.serialize(optimizer)
    assert serialized["registered_name"] == "fusedopt>Adam"
    assert serialized["config"]["requires"] == "import fusedopt.keras"
    again = keras.optimizers.deserialize(serialized)  # with fusedopt: its own class again
    assert type(again) is fusedopt.keras.Adam
    assert again.get_config() | {"name": None} == optimizer.get_config() | {"name": None}


def test_loading_what_needs_fusedopt_without_it_says_import_fusedopt(installed, tmp_path):
    train = data()
    net = fit({"class_name": "adam", "config": {"backend": "cpu"}}, epochs=1, train=train)
    assert type(net.optimizer) is fusedopt.keras.Adam
    net.save(tmp_path / "m.keras")
    loaded = _load_without_fusedopt(tmp_path / "m.keras", train)
    assert "import fusedopt.keras" in loaded["error"], loaded
    fusedopt.keras.uninstall()  # with fusedopt imported, the file loads as fusedopt's
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert type(again.optimizer) is fusedopt.keras.Adam
    assert again.optimizer.get_config()["backend"] == "cpu"
    assert max_diff(list(variables(again.optimizer).values()),
                    list(variables(net.optimizer).values())) == 0.0
