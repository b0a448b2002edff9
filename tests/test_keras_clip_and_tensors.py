"""Keras' private hooks and argument forms that code written for Keras uses: the clipping
and weight decay hooks called on their own, and hyperparameters given as tensors."""

import keras
import numpy as np
import pytest
import torch
from test_keras_conformance import NAMES
from tolerances import VS_PEER_FLOAT32

import fusedopt.keras
from keras.src.optimizers import base_optimizer

CLIPS = [dict(clipnorm=1.0), dict(global_clipnorm=1.0), dict(clipvalue=0.5), {}]
GRADS = [np.array([[30.0, -40.0], [0.2, 0.1]], dtype="float32"),
         np.array([0.3, -7.0], dtype="float32")]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: next(iter(c), "none"))
def test_clip_gradients_called_on_its_own_is_keras(name, clip):
    ours = getattr(fusedopt.keras, name)(**clip)._clip_gradients(
        [keras.ops.convert_to_tensor(g) for g in GRADS])
    theirs = getattr(keras.optimizers, name)(**clip)._clip_gradients(
        [keras.ops.convert_to_tensor(g) for g in GRADS])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a),
                                   keras.ops.convert_to_numpy(b), rtol=1e-6)
    if clip:  # it clipped something: these grads are over every limit
        assert not all(np.array_equal(keras.ops.convert_to_numpy(a), g)
                       for a, g in zip(ours, GRADS))


def _differ(ours, theirs) -> float:
    """Largest difference, relative to each array's scale (second moments reach 1e4 here)."""
    return max(np.abs(a - b).max() / max(1.0, np.abs(b).max()) for a, b in zip(ours, theirs))


def _one_step(cls, **kwargs):
    variables = [keras.Variable(np.ones_like(g)) for g in GRADS]
    optimizer = cls(learning_rate=0.1, **kwargs)
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in GRADS], variables)
    return [np.asarray(v.numpy()) for v in variables]


@pytest.mark.parametrize("clip", CLIPS[:3], ids=lambda c: next(iter(c)))
def test_apply_clips_once_inside_the_fused_pass(monkeypatch, clip):
    calls = []
    keras_clip = base_optimizer.BaseOptimizer._clip_gradients
    monkeypatch.setattr(base_optimizer.BaseOptimizer, "_clip_gradients",
                        lambda self, grads: calls.append(self) or keras_clip(self, grads))
    ours = _one_step(fusedopt.keras.SGD, **clip)
    assert calls == []  # Keras' clipping did not run before the fused pass clipped
    theirs = _one_step(keras.optimizers.SGD, **clip)
    assert len(calls) == 1
    assert _differ(ours, theirs) < VS_PEER_FLOAT32


def test_apply_weight_decay_called_on_its_own_is_keras():
    results = []
    for cls in (fusedopt.keras.AdamW, keras.optimizers.AdamW):
        variables = [keras.Variable(np.full(3, 2.0, dtype="float32"))]
        optimizer = cls(learning_rate=0.1, weight_decay=0.5)
        optimizer.build(variables)
        optimizer._apply_weight_decay(variables)
        results.append(np.asarray(variables[0].numpy()))
    assert np.array_equal(*results) and not np.array_equal(results[0], np.full(3, 2.0))


#: A hyperparameter of each class that Keras' torch backend takes as a tensor.
TENSOR_ARGUMENT = {"Adam": "beta_1", "AdamW": "beta_2", "Adamax": "beta_1", "Nadam": "beta_1",
                   "Lion": "beta_2", "RMSprop": "rho", "Adadelta": "rho", "Adagrad": "epsilon"}
VALUE = {"beta_1": 0.8, "beta_2": 0.95, "rho": 0.8, "epsilon": 1e-3}


def _steps(cls, argument, value, steps=5):
    """The weights and the optimizer's state arrays after ``steps`` steps."""
    variables = [keras.Variable(np.ones_like(g)) for g in GRADS]
    optimizer = cls(learning_rate=0.1, **{argument: value})
    for k in range(steps):
        optimizer.apply([keras.ops.convert_to_tensor(g * (k + 1)) for g in GRADS], variables)
    state = [v for v in optimizer.variables if tuple(v.shape) in {g.shape for g in GRADS}]
    return [np.asarray(v.numpy()) for v in variables + state]


@pytest.mark.parametrize("name", sorted(TENSOR_ARGUMENT))
@pytest.mark.parametrize("form", ["tensor", "ops", "variable"])
def test_a_tensor_hyperparameter_steps_as_in_keras(name, form):
    argument = TENSOR_ARGUMENT[name]
    make = {"tensor": lambda x: torch.tensor(x), "ops": keras.ops.convert_to_tensor,
            "variable": keras.Variable}[form]
    ours = _steps(getattr(fusedopt.keras, name), argument, make(VALUE[argument]))
    theirs = _steps(getattr(keras.optimizers, name), argument, make(VALUE[argument]))
    assert _differ(ours, theirs) < VS_PEER_FLOAT32
    # the value is used, not a default: a different one gives different weights
    other = _steps(getattr(fusedopt.keras, name), argument, make(VALUE[argument] / 2))
    assert _differ(ours, other) > 1e-4


def test_a_one_element_tensor_is_its_number():
    ours = _steps(fusedopt.keras.Adam, "beta_1", torch.tensor([0.8]))
    theirs = _steps(keras.optimizers.Adam, "beta_1", 0.8)
    assert _differ(ours, theirs) < VS_PEER_FLOAT32


def test_a_variable_hyperparameter_changed_between_steps_is_followed():
    results = []
    for cls in (fusedopt.keras.Adam, keras.optimizers.Adam):
        beta_1 = keras.Variable(0.9)
        variables = [keras.Variable(np.ones_like(g)) for g in GRADS]
        optimizer = cls(learning_rate=0.1, beta_1=beta_1)
        for k in range(4):
            if k == 2:
                beta_1.assign(0.5)
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in GRADS], variables)
        results.append([np.asarray(v.numpy()) for v in variables])
    assert _differ(*results) < VS_PEER_FLOAT32


@pytest.mark.parametrize("value,error,match", [
    (torch.tensor(1.5), ValueError, r"beta_1 must be in \[0, 1\), got 1.5"),
    (keras.Variable(-0.1), ValueError, r"beta_1 must be in \[0, 1\), got -0.1"),
    (torch.tensor([0.9, 0.9]), ValueError, r"beta_1 must be a number or hold one number, "
                                           r"got a Tensor of shape \(2,\)"),
    (lambda: 0.9, TypeError, r"beta_1 must be a number or a tensor holding one, got the "
                             r"callable"),
])
def test_a_bad_tensor_hyperparameter_is_refused_as_a_number_is(value, error, match):
    with pytest.raises(error, match=match):
        fusedopt.keras.Adam(beta_1=value)


def test_a_variable_set_out_of_range_stops_the_step_before_anything_changes():
    beta_1 = keras.Variable(0.9)
    variables = [keras.Variable(np.ones_like(g)) for g in GRADS]
    optimizer = fusedopt.keras.Adam(learning_rate=0.1, beta_1=beta_1)
    optimizer.apply([keras.ops.convert_to_tensor(g) for g in GRADS], variables)
    state = variables + optimizer._momentums + optimizer._velocities + [optimizer.iterations]
    before = [np.asarray(v.numpy()).copy() for v in state]
    beta_1.assign(1.5)
    with pytest.raises(ValueError, match=r"beta_1 must be in \[0, 1\), got 1.5"):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in GRADS], variables)
    after = [np.asarray(v.numpy()) for v in state]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
