"""fusedopt.keras' classes for the optimizers Keras does not ship (RAdam, Rprop, ASGD,
AdEMAMix, Adan): Keras optimizers with fusedopt.X's Keras-style arguments, stepped by the same
fused engine as fusedopt.X (the same bits on the same grads), their config round trip,
model.fit and the checks of their arguments."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fusedopt  # noqa: E402
import fusedopt.keras  # noqa: E402
from fusedopt.algorithms.registry import REGISTRY  # noqa: E402

#: What fusedopt.keras makes a class of: not a schedule-free switch (a rule, no optimizer).
PEERLESS = sorted(n for n, s in REGISTRY.items() if s.keras is None and s.public
                  and s.matrix is None)
SETTINGS = {"radam": dict(learning_rate=0.01, beta_2=0.99),
            "rprop": dict(learning_rate=0.02, eta_plus=1.5),
            "asgd": dict(learning_rate=0.05, lambd=0.01, t0=3.0),
            "ademamix": dict(learning_rate=0.01, alpha=2.0, t_alpha=5, t_beta3=5),
            "adan": dict(learning_rate=0.01, beta_2=0.8, weight_decay=0.05)}


def _keras_class(name):
    return getattr(fusedopt.keras, REGISTRY[name].class_name)


def test_every_optimizer_keras_lacks_has_a_class():
    assert {"radam", "rprop", "asgd", "ademamix", "adan"} <= set(PEERLESS)
    for name in PEERLESS:
        cls = _keras_class(name)
        assert issubclass(cls, keras.optimizers.Optimizer)
        assert cls.__module__ == "fusedopt.keras.optimizers"


@pytest.mark.parametrize("name", PEERLESS)
def test_the_same_bits_as_the_core_class(name):
    hp = SETTINGS.get(name, {})
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (5,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(8)]
    variables = [keras.Variable(p.copy()) for p in start]
    ours = _keras_class(name)(**hp)
    arrays = [p.copy() for p in start]
    # Keras keeps the learning rate in a float32 variable: the core class gets that value
    # (ASGD's eta is a function of it, computed in double).
    rate = float(np.float32(hp.get("learning_rate", REGISTRY[name].defaults()["learning_rate"])))
    core = getattr(fusedopt, REGISTRY[name].class_name)(**{**hp, "learning_rate": rate})
    for step in grads:
        ours.apply_gradients([(keras.ops.convert_to_tensor(g), v)
                              for g, v in zip(step, variables)])
        core.apply_gradients([(g.copy(), a) for g, a in zip(step, arrays)])
    for v, a in zip(variables, arrays):
        assert np.array_equal(keras.ops.convert_to_numpy(v), a)
        assert not np.array_equal(a, start[0] if a.shape == start[0].shape else start[1])
    for slot in REGISTRY[name].slot_decls:
        held = getattr(ours, f"_{slot.name}_variables")
        assert len(held) == len(variables) and all(slot.name in h.path for h in held)


@pytest.mark.parametrize("name", PEERLESS)
def test_config_round_trip_and_fit(name):
    opt = _keras_class(name)(**SETTINGS.get(name, {}))
    config = opt.get_config()
    assert all(config[k] == pytest.approx(v) for k, v in SETTINGS.get(name, {}).items())
    again = _keras_class(name).from_config(config)
    assert again.get_config() == config
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=again, loss="mse")
    x = np.random.default_rng(1).standard_normal((32, 4)).astype("float32")
    history = model.fit(x, x[:, :3] * 2, epochs=3, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert int(again.iterations.numpy()) == 12


def test_arguments_are_checked_with_their_names():
    with pytest.raises(ValueError, match="eta_minus must be in"):
        fusedopt.keras.Rprop(eta_minus=1.5)
    with pytest.raises(ValueError, match="beta_3 must be in"):
        fusedopt.keras.AdEMAMix(beta_3=1.0)


def test_a_saved_model_loads_with_its_optimizer_and_state(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=fusedopt.keras.Rprop(learning_rate=0.02), loss="mse")
    x = np.random.default_rng(1).standard_normal((16, 4)).astype("float32")
    model.fit(x, x[:, :3], epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is fusedopt.keras.Rprop
    saved, again = model.optimizer.variables, loaded.optimizer.variables
    assert len(saved) == len(again) and any("step_size" in v.name for v in again)
    assert all(np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
               for a, b in zip(saved, again))
