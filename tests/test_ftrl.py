"""Ftrl against keras.optimizers.Ftrl in model.fit: 50 steps of the article's model in three
non-default settings (a general power with every regularizer on in two, the square root of
the default power in the third), weights within 1e-6 of the largest and the optimizer
variables close (fusedopt/algorithms/ftrl.py is the whole optimizer).

torch has no Ftrl: fusedopt.torch.Ftrl takes TensorFlow's raw-op names for Keras' arguments
and runs Keras' rule; it is held to the float64 oracle in an autograd loop."""

import keras_fit
import numpy as np
import pytest
import torch_loops as loops

import fusedopt
import fusedopt.keras
import fusedopt.torch

keras = keras_fit.keras
EPOCHS = 10  # 5 batches an epoch: 50 steps


@pytest.mark.parametrize("hp", [
    dict(learning_rate=0.05, learning_rate_power=-0.3, initial_accumulator_value=0.5,
         l1_regularization_strength=1e-3, l2_regularization_strength=1e-2,
         l2_shrinkage_regularization_strength=1e-2, beta=0.1),
    dict(learning_rate=0.1, learning_rate_power=-0.7, l1_regularization_strength=2e-3,
         l2_regularization_strength=3e-2, l2_shrinkage_regularization_strength=5e-3, beta=0.2,
         weight_decay=0.01),
    dict(learning_rate=0.1, l1_regularization_strength=1e-3, l2_regularization_strength=1e-2,
         l2_shrinkage_regularization_strength=1e-2, beta=0.2, weight_decay=0.01)],
    ids=["power-0.3", "power-0.7-decay", "sqrt-decay"])
def test_ftrl_matches_keras_in_model_fit(hp):
    keras.utils.set_random_seed(0)
    ours = keras_fit.fit(fusedopt.keras.Ftrl(**hp), epochs=EPOCHS)
    keras.utils.set_random_seed(0)
    theirs = keras_fit.fit(keras.optimizers.Ftrl(**hp), epochs=EPOCHS)
    a, b = keras_fit.weights(ours), keras_fit.weights(theirs)
    scale = max(float(np.abs(w).max()) for w in b)
    assert keras_fit.max_diff(a, b) <= 1e-6 * scale
    assert keras_fit.max_diff(a, keras_fit.weights(keras_fit.fit(
        keras.optimizers.Ftrl(**hp), epochs=0))) > 1e-3  # it trained
    # By path within the optimizer: its own name ("ftrl", "ftrl_1") counts the optimizers
    # Keras has made in the process so far.
    mine, its = ({k.split("/", 1)[-1]: v for k, v in keras_fit.variables(o).items()}
                 for o in (ours.optimizer, theirs.optimizer))
    assert mine.keys() == its.keys() and any("linear" in k for k in its)
    for key, value in its.items():
        assert np.max(np.abs(mine[key] - value)) <= 1e-5 * max(np.max(np.abs(value)), 1), key


def test_the_first_step_takes_the_initial_accumulator_value():
    """Every slot starts at initial_accumulator_value (one initial value for all); the rule
    takes 0 for the linear term at the first step: Keras' Ftrl, three steps."""
    w = np.array([1.0, 2.0], np.float32)
    opt = fusedopt.Ftrl(learning_rate=3.0, initial_accumulator_value=0.1,
                        l1_regularization_strength=0.001, l2_regularization_strength=2.0)
    for _ in range(3):
        opt.apply_gradients([(np.array([0.1, 0.2], np.float32), w)])
    kw = keras.Variable(np.array([1.0, 2.0], np.float32))
    peer = keras.optimizers.Ftrl(learning_rate=3.0, initial_accumulator_value=0.1,
                                 l1_regularization_strength=0.001,
                                 l2_regularization_strength=2.0)
    for _ in range(3):
        peer.apply_gradients([(keras.ops.convert_to_tensor(np.array([0.1, 0.2], "float32")),
                               kw)])
    np.testing.assert_allclose(w, keras.ops.convert_to_numpy(kw), rtol=1e-6)
    assert float(np.asarray(opt.state(w)["accumulator"])[0]) == pytest.approx(0.13)


def test_bad_hyperparameters_are_refused_with_keras_names():
    with pytest.raises(ValueError, match="learning_rate_power must be a finite number <= 0"):
        fusedopt.Ftrl(learning_rate_power=0.5)
    with pytest.raises(ValueError, match="l1_regularization_strength must be"):
        fusedopt.Ftrl(l1_regularization_strength=-1.0)


TORCH_SETTINGS = [dict(lr=0.05, lr_power=-0.3, initial_accumulator_value=0.5, l1=1e-3, l2=1e-2,
                       l2_shrinkage=1e-2, beta=0.1),
                  dict(lr=0.1, l1=2e-3, l2=3e-2, l2_shrinkage=5e-3, beta=0.2, weight_decay=0.01)]
KERAS_NAMES = {"lr": "learning_rate", "lr_power": "learning_rate_power",
               "l1": "l1_regularization_strength", "l2": "l2_regularization_strength",
               "l2_shrinkage": "l2_shrinkage_regularization_strength"}


@pytest.mark.parametrize("hp", TORCH_SETTINGS, ids=["power-0.3", "sqrt-decay"])
def test_torch_ftrl_matches_keras_ftrl_in_an_autograd_loop(hp):
    """fusedopt.torch.Ftrl in a torch training loop, 50 steps, and keras.optimizers.Ftrl
    with Keras' names for the same values, fed the same grads: apart only by their float32
    arithmetic. (Not the float64 oracle: where |linear| is just past l1 the param is a
    difference that cancels, and any float32 Ftrl, Keras' too, is far from float64 there.)"""
    model, _ = loops.twins()
    x, y = loops.data()
    opt = fusedopt.torch.Ftrl(model.parameters(), **hp)
    peer = keras.optimizers.Ftrl(**{KERAS_NAMES.get(k, k): v for k, v in hp.items()})
    shadow = [keras.Variable(p.detach().numpy().copy()) for p in model.parameters()]
    for _ in range(50):
        loops.train(model, opt, 1, x, y)
        peer.apply_gradients([(keras.ops.convert_to_tensor(p.grad.numpy()), v)
                              for p, v in zip(model.parameters(), shadow)])
    # As in model.fit above: the weights within 1e-6 of the largest, the optimizer's
    # variables within 1e-5 (of the largest, or absolutely below 1).
    ours = [p.detach().double().numpy() for p in model.parameters()]
    theirs = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in shadow]
    scale = max(float(np.max(np.abs(w))) for w in theirs)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs)) <= 1e-6 * scale
    for key, variables in (("linear", peer._linears), ("accumulator", peer._accumulators)):
        for p, v in zip(model.parameters(), variables):
            value = keras.ops.convert_to_numpy(v).astype(np.float64)
            mine = opt.state[p][key].double().numpy()
            assert np.max(np.abs(mine - value)) <= 1e-5 * max(np.max(np.abs(value)), 1), key
    assert loops.relative(next(model.parameters()), next(loops.mlp(0).parameters())) > 1e-3
    state = opt.state[next(model.parameters())]
    assert set(state) == {"step", "accumulator", "linear"} and float(state["step"]) == 50


def test_torch_ftrl_names_and_bad_values():
    opt = fusedopt.torch.Ftrl([fusedopt_param()], lr=0.1, lr_power=-0.3, l1=0.01)
    group = opt.param_groups[0]
    assert (group["lr_power"], group["l1"], group["l2_shrinkage"]) == (-0.3, 0.01, 0.0)
    with pytest.raises(ValueError, match="lr_power must be a finite number <= 0"):
        fusedopt.torch.Ftrl([fusedopt_param()], lr_power=0.5)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        fusedopt.torch.Ftrl([fusedopt_param()], lr=0.0)


def fusedopt_param():
    import torch
    return torch.nn.Parameter(torch.ones(3))
