"""Quantized state in fusedopt.keras (``state_dtype="q8"`` / ``"q4"``).

The door only translates: a Keras optimizer with quantized state steps every bit as the
Keras-style class (the core API, Keras' convention) with the same state_dtype; its slot
variables are the quantized buffers themselves (uint8, about 2 bytes per element for q8's
two AdamW slots), float32 for a variable under ``min_quantized_size``; bfloat16 variables
train with q8 state and stochastic rounding; a saved model continues bit for bit, one
trained by schedule-free AdamW (z float32 beside v's buffer) too.
"""

import keras
import numpy as np
import pytest
from keras_fit import build_model, data, fit, variables, weights

import fusedopt
import fusedopt.keras
from fusedopt.memory import quant

SHAPES = [(64, 80), (80,)]  # 5120 elements: quantized; 80: float32 state
STEPS = 5
HYPER = dict(learning_rate=1e-2, weight_decay=0.01)


def _values(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]


@pytest.mark.parametrize("fmt", ["q8", "q4", "q8-dynamic"])
def test_steps_are_the_keras_style_class_steps(fmt):
    values, grads = _values(), _grads()
    held = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(values)]
    opt = fusedopt.keras.AdamW(**HYPER, state_dtype=fmt)
    for step in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v) for g, v in zip(step, held)])
    params = [v.copy() for v in values]
    core = fusedopt.AdamW(**HYPER, state_dtype=fmt, backend="cpu")
    for step in grads:
        core.apply_gradients([(g.copy(), p) for g, p in zip(step, params)])
    for v, p in zip(held, params):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), p)
    big, small = SHAPES[0], SHAPES[1]
    n = int(np.prod(big))
    slots = [opt._momentums, opt._velocities]
    for slot, name in zip(slots, ("m", "v")):
        assert slot[0].dtype == "uint8" and tuple(slot[0].shape) == (
            quant.FORMATS[fmt].nbytes(n),)
        assert slot[1].dtype == "float32" and tuple(slot[1].shape) == small
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(slot[0]),
                                      core.state(params[0])[name])
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(slot[1]),
                                      core.state(params[1])[name])
    per_param = sum(quant.FORMATS[fmt].nbytes(n) for _ in slots) / n
    assert per_param <= {"q8": 2.04, "q4": 1.07, "q8-dynamic": 2.04}[fmt]


def test_a_bfloat16_model_trains_with_q8_state_and_stochastic_rounding():
    make = lambda: fusedopt.keras.AdamW(  # noqa: E731
        learning_rate=0.01, state_dtype="q8", min_quantized_size=0,
        stochastic_rounding=True, seed=3)
    train = data()
    short = fit(make(), epochs=1, train=train, policy="bfloat16")
    longer = fit(make(), epochs=5, train=train, policy="bfloat16")
    assert {v.dtype for v in longer.trainable_variables} == {"bfloat16"}
    slots = longer.optimizer._momentums + longer.optimizer._velocities
    assert {s.dtype for s in slots} == {"uint8"}
    loss = lambda net: float(net.evaluate(train.x, train.y, verbose=0)[0])  # noqa: E731
    assert loss(longer) < loss(short)


def test_config_and_save_load_continue_bit_for_bit(tmp_path):
    make = lambda: fusedopt.keras.Adam(learning_rate=0.01, state_dtype="q4",  # noqa: E731
                                       min_quantized_size=0)
    config = make().get_config()
    assert config["state_dtype"] == "q4" and config["min_quantized_size"] == 0
    assert type(make()).from_config(config).get_config() == config
    assert "state_dtype" not in fusedopt.keras.Adam().get_config()
    train = data()
    uninterrupted = fit(make(), epochs=5, train=train)
    first = fit(make(), epochs=3, train=train)
    first.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.get_config() == first.optimizer.get_config()
    loaded.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(weights(loaded), weights(uninterrupted)):
        np.testing.assert_array_equal(a, b)
    ours, theirs = variables(loaded.optimizer), variables(uninterrupted.optimizer)
    assert len(ours) == len(theirs)
    for (key, a), b in zip(ours.items(), theirs.values()):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_bad_state_dtype_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"state_dtype must be None .* 'q8' or 'q4'"):
        fusedopt.keras.Adam(state_dtype="int8")
    with pytest.raises(ValueError, match="min_quantized_size must be an int >= 0"):
        fusedopt.keras.Adam(state_dtype="q8", min_quantized_size=-1)
    keras.backend.clear_session()
    net = build_model(0)
    before = weights(net)
    opt = fusedopt.keras.Adam(state_dtype="q8", min_quantized_size=0)
    opt.build(net.trainable_variables)
    assert all(s.dtype == "uint8" for s in opt._momentums)
    for a, b in zip(weights(net), before):
        np.testing.assert_array_equal(a, b)


def test_schedule_free_saves_and_loads_with_the_model_bit_for_bit(tmp_path):
    """Schedule-free AdamW's z is a float32 variable beside v's uint8 buffer (only v is
    quantized); both go through model.save and load_model, and training continues."""
    make = lambda: fusedopt.keras.ScheduleFreeAdamW(  # noqa: E731
        learning_rate=0.01, state_dtype="q8", min_quantized_size=0)
    train = data()
    uninterrupted = fit(make(), epochs=4, train=train)
    first = fit(make(), epochs=2, train=train)
    assert {s.dtype for s in first.optimizer._momentums} == {"float32"}
    assert {s.dtype for s in first.optimizer._velocities} == {"uint8"}
    first.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    loaded.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(weights(loaded), weights(uninterrupted)):
        np.testing.assert_array_equal(a, b)
    for (key, a), b in zip(variables(loaded.optimizer).items(),
                           variables(uninterrupted.optimizer).values()):
        np.testing.assert_array_equal(a, b, err_msg=key)
