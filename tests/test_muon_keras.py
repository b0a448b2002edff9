"""fusedopt.keras.Muon against keras.optimizers.Muon: a model with 2-D kernels, biases and
an Embedding fitted 50 steps (5 epochs of 10 batches) from one seed, two non-default
settings, within 1e-6 relative in float32; the routing of each variable to the Muon or the
AdamW engine as Keras' Muon routes it; Keras' Muon's weight decay; a saved model that
loads back and continues bit for bit; and the refusals, which change nothing.

The Muon engine's step is Keras' bit for bit (a model whose every variable takes it fits
to identical weights). The AdamW variables differ in last bits: Keras computes the AdamW
step size in float32 from the betas rounded to float32 (beta_2 0.999 -> 0.99900001287,
which moves it by ~6e-6 relative from fusedopt's float64 one, as for fusedopt.keras.Adam:
tests/test_keras_conformance.py), and torch's float32 ``sqrt`` on the CPU is not correctly
rounded (a last-bit difference in ~1 element in 6 here; fusedopt's is). Training
amplifies those bits: Adam's normalization in small biases, Newton-Schulz in the kernels
they feed (more for more iterations and larger learning rates). So the two settings name
an adam_beta_2 whose float32 rounding moves the step size little (0.9: ~1e-7), a learning
rate of Keras' order and 3-4 iterations; Keras' defaults are held to KERAS_FIT (absolute),
as every other class is. Measured (max relative, per variable): 4.4e-7 and 8.2e-7.
"""

import functools

import keras
import numpy as np
import pytest
import torch
from keras_fit import fit, variables
from tolerances import KERAS_FIT

import fusedopt.keras

SETTINGS = {
    "no-nesterov": dict(learning_rate=0.002, nesterov=False, momentum=0.9, ns_steps=3,
                        rms_rate=0.3, exclude_layers=["last"], adam_lr_ratio=0.5,
                        adam_beta_1=0.8, adam_beta_2=0.9),
    "coefficients-decays": dict(learning_rate=0.001, weight_decay=0.02, adam_weight_decay=0.05,
                                momentum=0.8, muon_a=3.0, muon_b=-3.2, muon_c=1.2,
                                ns_steps=4, rms_rate=None, adam_lr_ratio=2.0,
                                adam_beta_2=0.9, epsilon=1e-6),
}
EPOCHS = 5  # 10 batches an epoch: 50 steps


class _Data:
    def __init__(self, samples=100, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.integers(0, 20, (samples, 6)).astype("int32")
        self.y = (self.x[:, :3].sum(axis=1) > 28).astype("int32")


def _net():
    """Embedding (AdamW: its path holds "embedding"), a Dense kernel (Muon), biases
    (AdamW: 1-D) and the "last" Dense (Muon, or AdamW where exclude_layers names it)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 8),
                             keras.layers.Flatten(),
                             keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(2, activation="softmax", name="last")])


def _fit(optimizer, epochs=EPOCHS, net=None, train=None):
    return fit(optimizer, epochs=epochs, net=net or _net(), train=train or _Data())


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _weights(net):
    return [np.asarray(v.value.detach()) for v in net.trainable_variables]


@functools.lru_cache(maxsize=None)
def _fitted(name, epochs=EPOCHS):
    """The model fitted with fusedopt's Muon at ``SETTINGS[name]``: compared with Keras'
    by the first test, the baseline every feature must move away from in the last (one fit
    per setting, length and process; a fit starts from the same seed and data every time)."""
    return _fit(fusedopt.keras.Muon(**SETTINGS[name]), epochs=epochs)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_fit_matches_keras_muon(name):
    hp = SETTINGS[name]
    net, theirs = _fitted(name), keras.optimizers.Muon(**hp)
    ours, twin = net.optimizer, _fit(theirs)
    assert type(net.optimizer) is fusedopt.keras.Muon
    assert int(ours.iterations) == int(theirs.iterations) == 50
    errors = {v.path: _relative(a, b)
              for v, a, b in zip(net.trainable_variables, _weights(net), _weights(twin))}
    print(name, {k: f"{e:.2e}" for k, e in errors.items()})
    assert max(errors.values()) <= 1e-6, errors
    initial = _weights(_net())
    assert min(_relative(a, b) for a, b in zip(_weights(net), initial)) > 1e-2  # it trained
    ours_vars, their_vars = variables(ours), variables(theirs)
    assert [p.split("/")[-1] for p in ours_vars] == [p.split("/")[-1] for p in their_vars]
    for a, b in zip(ours_vars.values(), their_vars.values()):
        assert _relative(a, b) <= 1e-5


def test_the_muon_engine_is_keras_bit_for_bit():
    """Every variable 2-D and none excluded (no biases; the embedding to Muon too)."""
    def net():
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((6,), dtype="int32"), keras.layers.Embedding(20, 8),
            keras.layers.Flatten(), keras.layers.Dense(16, activation="tanh", use_bias=False),
            keras.layers.Dense(2, activation="softmax", use_bias=False)])
    hp = dict(learning_rate=0.01, exclude_embeddings=False, weight_decay=0.1)
    ours = _fit(fusedopt.keras.Muon(**hp), net=net())
    theirs = _fit(keras.optimizers.Muon(**hp), net=net())
    assert all(np.array_equal(a, b) for a, b in zip(_weights(ours), _weights(theirs)))
    assert len(ours.optimizer._fused.lanes[0].engine.params) == 3


def test_keras_defaults_fit_as_keras():
    net, twin = _fit(fusedopt.keras.Muon()), _fit(keras.optimizers.Muon())
    assert max(float(np.abs(a - b).max())
               for a, b in zip(_weights(net), _weights(twin))) < KERAS_FIT


def test_each_variable_goes_to_the_engine_keras_gives_it():
    optimizer = fusedopt.keras.Muon(exclude_layers=["last"])
    net = _net()
    optimizer.build(net.trainable_variables)
    muon, adamw = (lane.engine for lane in optimizer._fused.lanes)
    assert (muon.spec.name, adamw.spec.name) == ("muon", "adamw")
    by_path = {v.path: v for v in net.trainable_variables}
    held = {name: {p for p, v in by_path.items() if v.value.data_ptr() in
                   {q.data_ptr() for q in engine.params}}
            for name, engine in (("muon", muon), ("adamw", adamw))}
    assert held["muon"] == {"sequential/dense/kernel"}
    assert held["adamw"] == set(by_path) - held["muon"]
    for path, variable in by_path.items():  # Keras' own predicate, Keras' own variables
        assert (path in held["adamw"]) == optimizer._should_use_adamw(variable)
    state = {v.value.data_ptr() for v in optimizer.variables}
    assert all(s.data_ptr() in state for engine in (muon, adamw)
               for slots in engine.states for s in slots)
    assert [len(s) for s in muon.states] == [1] and {len(s) for s in adamw.states} == {2}


def test_weight_decay_is_keras_muons():
    """AdamW variables decay by adam_weight_decay at the learning rate itself (not times
    adam_lr_ratio), even with weight_decay=None; exclude_from_weight_decay holds."""
    make = lambda: dict(weight_decay=None, adam_weight_decay=0.5, adam_lr_ratio=0.5,  # noqa
                        learning_rate=0.002, ns_steps=3, adam_beta_2=0.99)
    nets = []
    for cls in (fusedopt.keras.Muon, keras.optimizers.Muon):
        optimizer = cls(**make())
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        nets.append(_fit(optimizer))
    for a, b in zip(*(_weights(n) for n in nets)):
        assert _relative(a, b) <= 1e-6
    undecayed = _weights(_fit(fusedopt.keras.Muon(**{**make(), "adam_weight_decay": None})))
    embedding = 0  # the first variable: AdamW, decayed
    assert _relative(_weights(nets[0])[embedding], undecayed[embedding]) > 1e-3


def test_a_saved_model_loads_and_continues_bit_for_bit(tmp_path):
    hp = SETTINGS["coefficients-decays"]
    train = _Data()
    uninterrupted = _fit(fusedopt.keras.Muon(**hp), epochs=5, train=train)
    first = _fit(fusedopt.keras.Muon(**hp), epochs=3, train=train)
    first.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is fusedopt.keras.Muon
    assert loaded.optimizer.get_config() == first.optimizer.get_config()
    assert int(loaded.optimizer.iterations) == 30
    assert all(np.array_equal(a, b) for a, b in zip(variables(loaded.optimizer).values(),
                                                     variables(first.optimizer).values()))
    loaded.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    assert int(loaded.optimizer.iterations) == 50
    assert all(np.array_equal(a, b) for a, b in zip(_weights(loaded), _weights(uninterrupted)))
    assert all(np.array_equal(a, b) for a, b in zip(
        variables(loaded.optimizer).values(), variables(uninterrupted.optimizer).values()))


def test_a_keras_muon_checkpoint_continues_in_fusedopt(tmp_path):
    """The variables are Keras' own: Keras' Muon's weights file (model and optimizer)
    loads into fusedopt.keras.Muon, which continues as Keras' Muon does."""
    hp = SETTINGS["no-nesterov"]
    train = _Data()
    theirs = _fit(keras.optimizers.Muon(**hp), epochs=3, train=train)
    theirs.save_weights(tmp_path / "w.weights.h5")
    net = _net()
    net.compile(optimizer=fusedopt.keras.Muon(**hp), loss="sparse_categorical_crossentropy")
    net.optimizer.build(net.trainable_variables)
    net.load_weights(tmp_path / "w.weights.h5")
    assert int(net.optimizer.iterations) == 30
    for model in (net, theirs):
        model.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(_weights(net), _weights(theirs)):
        assert _relative(a, b) <= 1e-6


def test_config_is_keras_muons():
    hp = dict(exclude_layers=["last"], adam_lr_ratio=0.5, rms_rate=None, ns_steps=3)
    ours, theirs = fusedopt.keras.Muon(**hp), keras.optimizers.Muon(**hp)
    config = ours.get_config()
    assert config == theirs.get_config() | {"name": config["name"]}
    assert list(config) == list(theirs.get_config())
    assert fusedopt.keras.Muon.from_config(config).get_config() == config
    serialized = keras.optimizers.serialize(ours)
    assert serialized["registered_name"] == "fusedopt>Muon"
    assert type(keras.optimizers.deserialize(serialized)) is fusedopt.keras.Muon


def test_install_gives_muon_by_keras_name():
    fusedopt.keras.install()
    try:
        assert type(keras.optimizers.get("muon")).__mro__[1] is fusedopt.keras.Muon
    finally:
        fusedopt.keras.uninstall()
    assert type(keras.optimizers.get("muon")) is keras.optimizers.Muon


@pytest.mark.parametrize("kwargs,match", [
    (dict(adam_beta_1=1.5), r"Muon: adam_beta_1 must be in \[0, 1\), got 1.5"),
    (dict(adam_beta_2=-0.1), r"Muon: adam_beta_2 must be in \[0, 1\), got -0.1"),
    (dict(epsilon=-1.0), r"Muon: epsilon must be a finite number >= 0, got -1.0"),
    (dict(adam_lr_ratio=-1.0), r"Muon: adam_lr_ratio must be a finite number >= 0"),
    (dict(adam_weight_decay=-0.1), r"Muon: adam_weight_decay must be None or a finite"),
    (dict(ns_steps=100), r"Muon: ns_steps must be an int in \[0, 100\)"),
    (dict(momentum=-1.0), r"Muon: momentum must be a finite number >= 0, got -1.0"),
    (dict(learning_rate=-0.1), r"Muon: learning_rate must be a finite number >= 0"),
    (dict(stochastic_rounding=True), r"Muon: stochastic_rounding=True is not supported"),
    (dict(kahan_summation=True), r"Muon: kahan_summation=True is not supported"),
    (dict(backend="cuda"), r"Muon: backend='cuda' is not supported by this class yet"),
])
def test_bad_arguments_are_refused_when_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.keras.Muon(**kwargs)


def _snapshot(net):
    return ([w.copy() for w in _weights(net)],
            [np.asarray(v.value.detach()).copy() for v in net.optimizer.variables])


def _unchanged(net, before) -> bool:
    after = _snapshot(net)
    return all(np.array_equal(a, b) for a, b in zip(before[0] + before[1],
                                                     after[0] + after[1]))


@pytest.mark.parametrize("attribute,value,match", [
    ("adam_beta_2", 1.0, r"Muon: adam_beta_2 must be in \[0, 1\), got 1.0"),
    ("adam_lr_ratio", float("nan"), r"Muon: adam_lr_ratio must be a finite number >= 0"),
    ("ns_steps", -1, r"Muon: ns_steps must be an int in \[0, 100\)"),
])
def test_a_bad_change_between_steps_is_refused_and_changes_nothing(attribute, value, match):
    """Checked before either engine steps, and before Keras' decay of the AdamW variables
    (adam_weight_decay is on: a decay that ran would show)."""
    net = _fit(fusedopt.keras.Muon(adam_weight_decay=0.1), epochs=1)
    before = _snapshot(net)
    setattr(net.optimizer, attribute, value)
    with pytest.raises(ValueError, match=match):
        _fit(net.optimizer, epochs=1, net=net)
    assert _unchanged(net, before)


def test_a_bad_grad_for_one_engine_changes_neither():
    net = _fit(fusedopt.keras.Muon(adam_weight_decay=0.1), epochs=1)
    before = _snapshot(net)
    grads = [keras.ops.ones(v.shape) for v in net.trainable_variables]
    grads[-1] = keras.ops.ones((7,))  # the last bias (AdamW) gets a grad of another shape
    with pytest.raises(ValueError, match=r"shape"):
        net.optimizer.apply(grads, net.trainable_variables)
    assert _unchanged(net, before)


def test_float16_and_cuda_variables_are_refused_when_built():
    with pytest.raises(TypeError, match=r"float16"):
        fusedopt.keras.Muon().build([keras.Variable(np.ones((3, 4)), dtype="float16",
                                                    name="w")])
    if not torch.cuda.is_available():
        return
    with keras.device("cuda"):
        variable = keras.Variable(np.ones((3, 4), np.float32), name="w")
    with pytest.raises(ValueError, match=r"this class steps on the CPU only"):
        fusedopt.keras.Muon().build([variable])


def _three_steps(cls, dtype, init):
    variables = [keras.Variable(keras.ops.cast(x, dtype), dtype=dtype, name=f"w{i}")
                 for i, x in enumerate(init)]
    optimizer = cls(learning_rate=0.01)
    for step in range(3):
        optimizer.apply([keras.ops.convert_to_tensor(
            np.sin(np.arange(x.size).reshape(x.shape) + step).astype(np.float32), dtype)
            for x in init], variables)
    return optimizer, [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32"))
                       for v in variables]


def test_bfloat16_variables_step_as_keras():
    """bfloat16 variables keep bfloat16 state (Keras' own), stepped with plain stores: the
    Muon kernel as Keras' bfloat16 step, to two bfloat16 ulps. Keras' bfloat16 AdamW step
    does not move (beta_2 = 0.999 rounds to 1.0 in bfloat16: its bias correction is 0),
    so the 1-D variable is held to Keras' float32 step instead, to a bfloat16 ulp."""
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s).astype(np.float32) for s in ((12, 5), (5,))]
    optimizer, (kernel, bias) = _three_steps(fusedopt.keras.Muon, "bfloat16", init)
    assert {str(v.dtype) for v in optimizer.variables[2:]} == {"bfloat16"}
    _, (their_kernel, their_bias) = _three_steps(keras.optimizers.Muon, "bfloat16", init)
    _, (_, float32_bias) = _three_steps(keras.optimizers.Muon, "float32", init)
    assert np.abs(kernel - their_kernel).max() <= 2 ** -7 * np.abs(their_kernel).max()
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(init[1], "bfloat16"),
                                                        "float32"))
    assert np.array_equal(their_bias, rounded)  # Keras' bfloat16 AdamW: no step
    assert np.abs(bias - float32_bias).max() <= 2 ** -8 * np.abs(float32_bias).max()
    assert np.abs(bias - rounded).max() > 0.02  # ours stepped: 3 steps of ~lr each


#: Keras' features with Muon: use_ema moves the Muon variables' averages after the weight
#: pass and the AdamW ones' in theirs (fusedopt/engine/launches.py).
FEATURES = {
    "global-clipnorm": dict(global_clipnorm=0.05),  # one norm over both engines' grads
    "clipnorm": dict(clipnorm=0.05),
    "clipvalue": dict(clipvalue=0.002),
    "ema": dict(use_ema=True, ema_momentum=0.8),
    "gradient-accumulation": dict(gradient_accumulation_steps=2),
    "schedule": dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(
        0.004, decay_steps=10, decay_rate=0.5)),
}


#: 20 steps: the schedule decays twice, gradient accumulation applies 10 times.
FEATURE_EPOCHS = 2


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_keras_features_fit_as_keras_muon(feature):
    """Each feature over FEATURE_EPOCHS (20 steps, against a plain fit as long), held to
    KERAS_FIT (absolute), as every class's features are
    (tests/test_keras_conformance.py): clipping moves the grads' last bits (Keras takes its
    norms in float32), which Adam's normalization spreads in the small biases."""
    hp = {**SETTINGS["no-nesterov"], **FEATURES[feature]}
    net = _fit(fusedopt.keras.Muon(**hp), epochs=FEATURE_EPOCHS)
    twin = _fit(keras.optimizers.Muon(**hp), epochs=FEATURE_EPOCHS)
    assert int(net.optimizer.iterations) == int(twin.optimizer.iterations) > 0
    assert max(float(np.abs(a - b).max())
               for a, b in zip(_weights(net), _weights(twin))) < KERAS_FIT
    plain = _weights(_fitted("no-nesterov", FEATURE_EPOCHS))
    assert max(_relative(a, b) for a, b in zip(_weights(net), plain)) > 1e-4  # it mattered
