"""``stateless_apply``: Keras' contract (values in, new values out, nothing written), with the
fused step run on copies; the results are those of Keras' own class."""

import keras
import numpy as np
import pytest
import torch
from test_keras_conformance import NAMES
from tolerances import VS_PEER_FLOAT32

import fusedopt.keras

CASES = [(name, {}) for name in NAMES] + [
    ("Adam", dict(amsgrad=True, weight_decay=0.05, clipnorm=0.5)),
    ("SGD", dict(momentum=0.9, nesterov=True, global_clipnorm=0.3)),
    ("RMSprop", dict(momentum=0.5, centered=True, clipvalue=0.2)),
    ("Adam", dict(use_ema=True, ema_momentum=0.9)),
    ("Adam", dict(gradient_accumulation_steps=2)),
    # two engines: the (4, 3) variable's Muon step, the (5,) one's AdamW and Keras' decay
    ("Muon", {}), ("Muon", dict(adam_weight_decay=0.1, global_clipnorm=0.3)),
]
STEPS = 5


def _problem():
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((4, 3)).astype("float32"),
              rng.standard_normal(5).astype("float32")]
    grads = [[rng.standard_normal(v.shape).astype("float32") for v in values]
             for _ in range(STEPS)]
    return values, grads


def _stateful(cls, kwargs):
    """The reference: Keras' own class (or ours), applied to real variables."""
    values, grads = _problem()
    variables = [keras.Variable(v) for v in values]
    optimizer = cls(learning_rate=0.1, **kwargs)
    for step in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    return ([np.asarray(v.numpy()) for v in variables],
            [np.asarray(v.numpy()) for v in optimizer.variables])


@pytest.mark.parametrize("name,kwargs", CASES)
def test_stateless_apply_gives_keras_results_and_writes_nothing(name, kwargs):
    values, grads = _problem()
    variables = [keras.Variable(v) for v in values]
    optimizer = getattr(fusedopt.keras, name)(learning_rate=0.1, **kwargs)
    optimizer.build(variables)
    state = [v.value.detach().clone() for v in optimizer.variables]
    trainable = [v.value.detach().clone() for v in variables]
    for step in grads:
        kept = [t.clone() for t in trainable + state]
        new, new_state = optimizer.stateless_apply(
            state, [keras.ops.convert_to_tensor(g) for g in step], trainable)
        # the tensors passed in are not written
        assert all(torch.equal(a, b) for a, b in zip(trainable + state, kept))
        trainable, state = new, new_state
    # neither are the variables, the optimizer's or the model's
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(variables, values))
    assert int(optimizer.iterations) == 0
    theirs, their_state = _stateful(getattr(keras.optimizers, name), kwargs)
    ours = [np.asarray(t.detach()) for t in trainable]
    assert max(np.abs(a - b).max() for a, b in zip(ours, theirs)) < VS_PEER_FLOAT32
    ours_state = [np.asarray(t.detach(), dtype="float64") for t in state]
    assert max(np.abs(a - b).max() for a, b in zip(ours_state, their_state)) < VS_PEER_FLOAT32
    # and the fused step on copies is the fused step: as the stateful apply, bit for bit
    stateful, stateful_state = _stateful(getattr(fusedopt.keras, name), kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(ours, stateful))
    assert all(np.array_equal(a, b) for a, b in zip(ours_state, stateful_state))


def test_inputs_are_left_as_they_were():
    values, grads = _problem()
    variables = [keras.Variable(v) for v in values]
    optimizer = fusedopt.keras.Adam(learning_rate=0.1)
    optimizer.build(variables)
    state = [v.value.detach().clone() for v in optimizer.variables]
    trainable = [v.value.detach().clone() for v in variables]
    kept = [t.clone() for t in state + trainable]
    new, new_state = optimizer.stateless_apply(
        state, [keras.ops.convert_to_tensor(g) for g in grads[0]], trainable)
    assert all(torch.equal(a, b) for a, b in zip(state + trainable, kept))
    assert not any(torch.equal(a, b) for a, b in zip(new, trainable))
    assert int(new_state[0]) == 1 and int(optimizer.iterations) == 0


def test_loss_scale_optimizer_skips_a_non_finite_step_statelessly():
    variables = [keras.Variable(np.arange(4, dtype="float32"))]
    optimizer = keras.optimizers.LossScaleOptimizer(fusedopt.keras.SGD(learning_rate=0.5))
    optimizer.build(variables)
    grads = [keras.ops.convert_to_tensor(np.full(4, np.inf, dtype="float32"))]
    new, _ = optimizer.stateless_apply([v.value for v in optimizer.variables], grads,
                                       [v.value for v in variables])
    assert np.array_equal(np.asarray(new[0].detach()), np.arange(4, dtype="float32"))


@pytest.mark.parametrize("rounding", [dict(kahan_summation=True),
                                      dict(stochastic_rounding=True, seed=5)])
def test_bfloat16_rounding_options_step_as_apply_does(rounding):
    """The copies include Kahan's compensation variables; stochastic rounding draws the same
    bits: the stateless steps equal the stateful ones bit for bit."""
    results = []
    for stateless in (True, False):
        rng = np.random.default_rng(0)
        variables = [keras.Variable(rng.standard_normal(64).astype("float32"), dtype="bfloat16"),
                     keras.Variable(rng.standard_normal(8).astype("float32"))]
        grads = [[keras.ops.cast(rng.standard_normal(v.shape).astype("float32"), v.dtype)
                  for v in variables] for _ in range(3)]
        optimizer = fusedopt.keras.Adam(learning_rate=0.01, **rounding)
        optimizer.build(variables)
        trainable = [v.value.detach().clone() for v in variables]
        state = [v.value.detach().clone() for v in optimizer.variables]
        for step in grads:
            if stateless:
                trainable, state = optimizer.stateless_apply(state, step, trainable)
            else:
                optimizer.apply(step, variables)
        if not stateless:
            trainable = [v.value.detach() for v in variables]
            state = [v.value.detach() for v in optimizer.variables]
        results.append([t.float().numpy() for t in trainable + state])
    assert all(np.array_equal(a, b) for a, b in zip(*results))
    start = torch.tensor(np.random.default_rng(0).standard_normal(64).astype("float32"))
    assert not np.array_equal(results[0][0], start.bfloat16().float().numpy())  # it stepped
