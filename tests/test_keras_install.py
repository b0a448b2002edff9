"""The article's line, ``model.compile(optimizer="adam")``, after ``fusedopt.keras.install()``."""

import keras
import pytest
from keras_fit import fit, max_diff, weights
from tolerances import KERAS_FIT

import fusedopt.keras

KERAS_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop",
               "adagrad": "Adagrad", "adadelta": "Adadelta", "adamax": "Adamax",
               "nadam": "Nadam", "lion": "Lion", "muon": "Muon"}


@pytest.fixture
def installed():
    fusedopt.keras.install()
    yield
    fusedopt.keras.uninstall()


def test_the_articles_line_trains_with_fusedopt(installed):
    net = fit("adam")  # model.compile(optimizer="adam", ...), then fit
    assert isinstance(net.optimizer, fusedopt.keras.Adam)  # which saves as Keras' Adam
    assert net.optimizer._fused.engine.iterations == 25  # fusedopt did the updates
    fusedopt.keras.uninstall()
    twin = fit("adam")
    assert type(twin.optimizer) is not fusedopt.keras.Adam
    assert isinstance(twin.optimizer, keras.optimizers.Adam)
    assert max_diff(weights(net), weights(twin)) < KERAS_FIT


@pytest.mark.parametrize("name", sorted(KERAS_NAMES))
def test_every_name_and_spelling_resolves_to_fusedopt(installed, name):
    cls = getattr(fusedopt.keras, KERAS_NAMES[name])
    serialized = keras.optimizers.serialize(getattr(keras.optimizers, KERAS_NAMES[name])())
    documented = {"class_name": KERAS_NAMES[name], "config": {"learning_rate": 0.05},
                  "module": "keras.optimizers", "registered_name": None}
    for identifier in (name, name.upper(), KERAS_NAMES[name],
                       {"class_name": KERAS_NAMES[name], "config": {"learning_rate": 0.05}},
                       documented, serialized):
        optimizer = keras.optimizers.get(identifier)
        assert isinstance(optimizer, cls), identifier
    assert keras.optimizers.get({"class_name": name, "config": {"learning_rate": 0.05}}
                                ).get_config()["learning_rate"] == pytest.approx(0.05)


def test_uninstall_restores_keras_and_install_is_idempotent():
    before = {name: type(keras.optimizers.get(name)) for name in KERAS_NAMES}
    assert not fusedopt.keras.installed()
    fusedopt.keras.install()
    fusedopt.keras.install()
    assert fusedopt.keras.installed()
    fusedopt.keras.uninstall()
    assert not fusedopt.keras.installed()
    assert {name: type(keras.optimizers.get(name)) for name in KERAS_NAMES} == before
    fusedopt.keras.uninstall()  # nothing installed: nothing changes
    assert {name: type(keras.optimizers.get(name)) for name in KERAS_NAMES} == before


def test_install_leaves_instances_and_other_names_alone(installed):
    theirs = keras.optimizers.Adam()
    assert keras.optimizers.get(theirs) is theirs
    assert type(keras.optimizers.get("ftrl")).__name__ == "Ftrl"
