"""``use_ema`` on the core classes (NumPy params) against Keras' own moving average."""

import numpy as np
import pytest
from peers import KERAS
from tolerances import VS_PEER_FLOAT32

import fusedopt
from fusedopt.algorithms.registry import REGISTRY

SHAPES = [(3, 4), (5,), (1,)]
STEPS = 10  # not a multiple of 3: the last step does not overwrite the weights
#: Large enough for every optimizer's weights to move away from their average.
LEARNING_RATE = {"adadelta": 1.0}


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]


def _params(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _run_keras(name, steps, **kwargs):
    import keras

    opt = getattr(keras.optimizers, KERAS[name])(**kwargs)
    variables = [keras.Variable(p, dtype="float32") for p in _params()]
    for grads in steps:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)
                             for g, v in zip(grads, variables)])
    averages = [keras.ops.convert_to_numpy(a) for a in opt._model_variables_moving_average]
    weights = [keras.ops.convert_to_numpy(v) for v in variables]
    opt.finalize_variable_values(variables)
    return weights, averages, [keras.ops.convert_to_numpy(v) for v in variables]


def _run_fusedopt(name, steps, **kwargs):
    cls = {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}[name]
    opt = cls(**kwargs)
    params = _params()
    for grads in steps:
        opt.apply_gradients(zip(grads, params))
    weights = [p.copy() for p in params]
    averages = [opt.moving_average(p).copy() for p in params]
    opt.finalize_variable_values()
    return weights, averages, params


def _assert_close(ours, theirs, what):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a, b, rtol=0, atol=VS_PEER_FLOAT32, err_msg=f"{what} {i}")


# Keras' classes only: Keras has no StableAdamW (its Keras-style class: test_stableadamw.py).
@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if REGISTRY[n].keras is not None
                                        and n in KERAS))
@pytest.mark.parametrize("ema", [dict(ema_momentum=0.9),
                                 dict(ema_momentum=0.5, ema_overwrite_frequency=3)],
                         ids=["average", "overwrite-every-3"])
def test_core_classes_average_as_keras(name, ema):
    steps = _grads()
    ema = dict(ema, use_ema=True, learning_rate=LEARNING_RATE.get(name, 0.05))
    weights, averages, final = _run_fusedopt(name, steps, **ema)
    k_weights, k_averages, k_final = _run_keras(name, steps, **ema)
    _assert_close(weights, k_weights, "weight")
    _assert_close(averages, k_averages, "average")
    _assert_close(final, k_final, "finalized weight")
    # The average is not the weights (else the test could not tell them apart).
    assert max(float(np.abs(a - w).max()) for a, w in zip(averages, weights)) > 1e-4


def test_first_step_starts_the_average_at_the_weights():
    params = _params()
    opt = fusedopt.Adam(use_ema=True)
    opt.apply_gradients(zip(_grads()[0], params))
    for p in params:
        np.testing.assert_array_equal(opt.moving_average(p), p)


def test_averages_survive_state_dict():
    steps = _grads()
    params = _params()
    opt = fusedopt.SGD(momentum=0.9, use_ema=True)
    for grads in steps[:4]:
        opt.apply_gradients(zip(grads, params))
    saved, copies = opt.state_dict(), [p.copy() for p in params]
    twin = fusedopt.SGD(momentum=0.9, use_ema=True)
    twin.load_state_dict(saved)
    for grads in steps[4:]:
        opt.apply_gradients(zip(grads, params))
        twin.apply_gradients(zip(grads, copies))
    for p, c in zip(params, copies):
        np.testing.assert_array_equal(opt.moving_average(p), twin.moving_average(c))


def test_config_reports_the_average():
    cfg = fusedopt.Adam(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=5).get_config()
    assert (cfg["use_ema"], cfg["ema_momentum"], cfg["ema_overwrite_frequency"]) == (True, 0.9, 5)
    assert fusedopt.Adam.from_config(cfg).get_config() == cfg


@pytest.mark.parametrize("kwargs,match", [
    (dict(use_ema=True, ema_momentum=1.5), r"ema_momentum must be in \[0, 1\], got 1.5"),
    (dict(use_ema=True, ema_overwrite_frequency=0), r"ema_overwrite_frequency must be an "
                                                     r"integer >= 1 or None, got 0"),
    (dict(use_ema="yes"), r"use_ema must be True or False"),
])
def test_bad_average_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.Adam(**kwargs)


def test_no_average_without_use_ema():
    params = _params()
    opt = fusedopt.Adam()
    opt.apply_gradients(zip(_grads()[0], params))
    with pytest.raises(ValueError, match="pass use_ema=True"):
        opt.moving_average(params[0])
