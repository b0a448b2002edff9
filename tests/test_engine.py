"""The engine behind every front door: hyperparameter groups, per-param step counts and
fused loss scaling (grads divided by the loss scale inside the pass, skipped on inf/NaN)."""

import numpy as np
import pytest
from variants import first_of_each, matrix_ids

from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.clip import Clipping
from fusedopt.engine.engine import Engine


def _engine(name, hp, convention, **kwargs):
    engine = Engine(REGISTRY[name], convention, backend="cpu", **kwargs)
    engine.add_group(hp)
    return engine


def _params(seed=0, shapes=((5,), (4097,), (3, 7))):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 3).astype(np.float32) for s in shapes]


def _grads(params, step, scale=1.0):
    rng = np.random.default_rng(100 + step)
    return [(rng.standard_normal(p.shape) * scale).astype(np.float32) for p in params]


def _bits(arrays):
    return [a.view(np.uint32).copy() for a in arrays]


#: Every optimizer's rule once: the grad scale is applied before the rule, whatever its flags
#: (every variant is checked on the CUDA host: tests/test_loss_scaling.py).
@pytest.mark.parametrize("name, hp, convention", first_of_each(),
                         ids=matrix_ids(first_of_each()))
def test_power_of_two_grad_scale_gives_the_unscaled_bits(name, hp, convention):
    plain, scaled = _params(), _params()
    a, b = _engine(name, hp, convention), _engine(name, hp, convention)
    a.add_params(plain)
    b.add_params(scaled)
    for t in range(4):
        grads = _grads(plain, t)
        assert a.step(grads)
        assert b.step([g * np.float32(1024.0) for g in grads], grad_scale=1024.0)
    assert all(np.array_equal(x, y) for x, y in zip(_bits(plain), _bits(scaled)))
    for pa, pb in zip(a.states, b.states):
        assert all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(pa, pb))
    assert a.iterations == b.iterations == 4


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_one_non_finite_element_skips_the_whole_step(bad):
    params = _params()
    engine = _engine("adam", dict(learning_rate=0.1), "keras")
    engine.add_params(params)
    engine.step(_grads(params, 0))
    before = _bits(params) + [s.view(np.uint32).copy() for slots in engine.states for s in slots]
    grads = _grads(params, 1)
    grads[1][2049] = bad
    assert engine.step(grads, grad_scale=8.0) is False
    assert engine.found_inf and engine.iterations == 1
    after = _bits(params) + [s.view(np.uint32).copy() for slots in engine.states for s in slots]
    assert all(np.array_equal(x, y) for x, y in zip(before, after))
    assert engine.step(_grads(params, 1), grad_scale=8.0) is True
    assert not engine.found_inf and engine.iterations == 2


def test_without_grad_scale_a_nan_grad_propagates_as_in_keras():
    params = _params()
    engine = _engine("sgd", dict(learning_rate=0.1), "keras")
    engine.add_params(params)
    grads = _grads(params, 0)
    grads[0][1] = np.nan
    assert engine.step(grads)
    assert np.isnan(params[0][1]) and np.isfinite(np.delete(params[0], 1)).all()


@pytest.mark.parametrize("clip", [dict(clipnorm=0.5), dict(global_clipnorm=0.7),
                                  dict(clipvalue=0.05)])
def test_clipping_sees_the_unscaled_grads(clip):
    plain, scaled = _params(), _params()
    a = _engine("adam", dict(learning_rate=0.1), "keras", clipping=Clipping(**clip))
    b = _engine("adam", dict(learning_rate=0.1), "keras", clipping=Clipping(**clip))
    a.add_params(plain)
    b.add_params(scaled)
    for t in range(3):
        grads = _grads(plain, t)
        a.step(grads)
        b.step([g * np.float32(256.0) for g in grads], grad_scale=256.0)
    for x, y in zip(plain, scaled):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad", [0.0, -2.0, np.inf, np.nan, "8", True])
def test_bad_grad_scale_changes_nothing(bad):
    params = _params()
    engine = _engine("adam", {}, "keras")
    engine.add_params(params)
    before = _bits(params)
    with pytest.raises(ValueError, match="grad_scale must be a positive finite number"):
        engine.step(_grads(params, 0), grad_scale=bad)
    assert all(np.array_equal(x, y) for x, y in zip(before, _bits(params)))
    assert engine.iterations == 0


def test_hyperparameter_groups_step_as_separate_optimizers():
    """Two groups of different learning rate and weight decay in one engine equal two
    engines of one group each, bit for bit; one launch per group."""
    first, second = _params(1), _params(2)
    hp_a = dict(learning_rate=0.01, weight_decay=0.1)
    hp_b = dict(learning_rate=0.05, beta_1=0.8)
    together = Engine(REGISTRY["adamw"], "torch", backend="cpu")
    together.add_params(first, together.add_group(hp_a))
    together.add_params(second, together.add_group(hp_b))
    alone_a, alone_b = _engine("adamw", hp_a, "torch"), _engine("adamw", hp_b, "torch")
    ref_a, ref_b = [p.copy() for p in first], [p.copy() for p in second]
    alone_a.add_params(ref_a)
    alone_b.add_params(ref_b)
    for t in range(3):
        ga, gb = _grads(first, t), _grads(second, t + 50)
        together.step(ga + gb)
        alone_a.step(ga)
        alone_b.step(gb)
    for x, y in zip(first + second, ref_a + ref_b):
        np.testing.assert_array_equal(x, y)
    assert len(together.launch_groups()) == 2


def test_per_param_steps_start_each_param_at_step_one():
    """torch counts steps per param: a param first stepped at step 4 gets step 1's bias
    correction, like a fresh optimizer on it."""
    early, late = _params(1, ((7,),)), _params(2, ((9,),))
    engine = Engine(REGISTRY["adam"], "torch", backend="cpu", per_param_steps=True)
    engine.add_group(dict(learning_rate=0.1))
    engine.add_params(early + late)
    fresh = _engine("adam", dict(learning_rate=0.1), "torch")
    late_ref = [late[0].copy()]
    fresh.add_params(late_ref)
    for t in range(3):
        engine.step(_grads(early, t), positions=[0])
    for t in range(3):
        g_early, g_late = _grads(early, 10 + t), _grads(late, 20 + t)
        engine.step(g_early + g_late)  # two step counts: two launches, one scalar set each
        fresh.step(g_late)
    np.testing.assert_array_equal(late[0], late_ref[0])
    assert engine.steps == [6, 3]
    assert len(engine.launch_groups()) == 2


def test_changing_slots_after_build_is_refused():
    engine = _engine("adam", dict(amsgrad=False), "keras")
    engine.add_params(_params())
    with pytest.raises(ValueError, match="state slots"):
        engine.set_hyper(0, dict(amsgrad=True))
    engine.set_hyper(0, dict(learning_rate=0.5))  # same slots: fine
    assert engine.hypers[0].hyper["learning_rate"] == 0.5


def test_bad_hyperparameters_name_their_group():
    engine = Engine(REGISTRY["adam"], "torch", backend="cpu")
    engine.add_group({})
    with pytest.raises(ValueError, match=r"group 1: beta_1 must be in \[0, 1\)"):
        engine.add_group(dict(beta_1=1.5))


def test_a_param_is_held_once():
    params = _params()
    engine = _engine("sgd", {}, "keras")
    engine.add_params(params)
    with pytest.raises(ValueError, match="already held"):
        engine.add_params(params[:1])
    assert len(engine.params) == 3


def test_found_inf_from_the_caller_skips_without_looking_at_the_grads():
    params = _params()
    engine = _engine("adam", {}, "keras")
    engine.add_params(params)
    before = _bits(params)
    assert engine.step(_grads(params, 0), grad_scale=np.float32(4.0),
                       found_inf=np.array(1.0)) is False
    assert engine.found_inf and engine.iterations == 0
    assert all(np.array_equal(x, y) for x, y in zip(before, _bits(params)))
    assert engine.step(_grads(params, 0), grad_scale=np.array(4.0), found_inf=0.0)
    assert engine.iterations == 1


def test_torch_tensors_step_in_place_like_numpy_arrays():
    torch = pytest.importorskip("torch")
    from fusedopt.memory import torch_kind as _torch_kind
    _torch_kind.register()
    arrays = _params()
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    on_numpy, on_torch = _engine("adam", dict(learning_rate=0.1), "torch"), \
        _engine("adam", dict(learning_rate=0.1), "torch")
    on_numpy.add_params(arrays)
    on_torch.add_params(tensors)
    for t in range(3):
        grads = _grads(arrays, t)
        on_numpy.step(grads)
        on_torch.step([torch.from_numpy(g) for g in grads])  # new grad tensors every step
    for a, t in zip(arrays, tensors):
        np.testing.assert_array_equal(a, t.numpy())
    assert all(isinstance(s, torch.Tensor) for slots in on_torch.states for s in slots)
