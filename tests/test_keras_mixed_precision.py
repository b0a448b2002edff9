"""fusedopt.keras under Keras' loss scaling and mixed-precision policies."""

import keras
import numpy as np
import pytest

import fusedopt.keras
from keras_fit import build_model, data, fit, max_diff, variables, weights
from tolerances import KERAS_FIT, KERAS_FIT_MIXED


def test_loss_scale_optimizer_skips_the_overflowing_step_in_fit():
    train = data()
    train.x[20:30] = np.inf  # the 3rd batch of every epoch: a NaN loss, NaN grads
    nets = []
    for cls in (fusedopt.keras.Adam, keras.optimizers.Adam):
        optimizer = keras.optimizers.LossScaleOptimizer(cls(), initial_scale=2.0**15)
        nets.append(fit(optimizer, train=train))
    ours, theirs = (net.optimizer for net in nets)
    assert type(ours.inner_optimizer) is fusedopt.keras.Adam
    # 25 batches, 5 skipped: the scale halved 5 times, 20 updates, every weight finite.
    assert float(ours.dynamic_scale) == float(theirs.dynamic_scale) == 2.0**10
    assert int(ours.inner_optimizer.iterations) == int(theirs.inner_optimizer.iterations) == 20
    assert ours.inner_optimizer._fused.engine.iterations == 20  # fusedopt applied them
    assert all(np.isfinite(w).all() for w in weights(nets[0]))
    assert max_diff(weights(nets[0]), weights(nets[1])) < KERAS_FIT


def _grads(variables, seed):
    rng = np.random.default_rng(seed)
    return [keras.ops.convert_to_tensor(rng.standard_normal(v.shape).astype(np.float32) * 100)
            for v in variables]


def test_loss_scale_optimizer_forced_overflow_changes_nothing():
    """One apply with an inf grad: no weight or optimizer variable moves, the scale halves;
    before and after, every step equals Keras' own Adam under the same wrapper."""
    runs = []
    for cls in (fusedopt.keras.Adam, keras.optimizers.Adam):
        keras.backend.clear_session()
        net = build_model(0)
        optimizer = keras.optimizers.LossScaleOptimizer(cls(), initial_scale=2.0**8)
        trained = net.trainable_variables
        optimizer.apply(_grads(trained, 0), trained)
        before = weights(net), list(variables(optimizer.inner_optimizer).values())
        bad = _grads(trained, 1)
        bad[2] = keras.ops.convert_to_tensor(np.full(trained[2].shape, np.inf, np.float32))
        optimizer.apply(bad, trained)
        after = weights(net), list(variables(optimizer.inner_optimizer).values())
        assert max_diff(before[0], after[0]) == 0.0 and max_diff(before[1], after[1]) == 0.0
        assert float(optimizer.dynamic_scale) == 2.0**7
        assert int(optimizer.inner_optimizer.iterations) == 1
        optimizer.apply(_grads(trained, 2), trained)
        assert int(optimizer.inner_optimizer.iterations) == 2
        runs.append(weights(net))
    assert max_diff(*runs) < KERAS_FIT


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policies(policy):
    nets = [fit(cls(), policy=policy) for cls in (fusedopt.keras.Adam, keras.optimizers.Adam)]
    net = nets[0]
    assert net.dtype_policy.name == policy
    assert net.layers[0].compute_dtype == policy.removeprefix("mixed_")
    assert {v.dtype for v in net.trainable_variables} == {"float32"}  # float32 masters
    optimizer = net.optimizer
    if policy == "mixed_float16":  # compile() wraps it for dynamic loss scaling
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        optimizer = optimizer.inner_optimizer
    assert type(optimizer) is fusedopt.keras.Adam
    engine = optimizer._fused.engine
    assert [launch.group.dtype for launch in engine.launch_groups()] == ["float32"]
    # Under float16, loss scaling skips the steps whose 16-bit grads overflow, as Keras'.
    twin = nets[1].optimizer
    twin = getattr(twin, "inner_optimizer", twin)
    assert int(optimizer.iterations) == int(twin.iterations) >= 20
    assert max_diff(weights(nets[0]), weights(nets[1])) < KERAS_FIT_MIXED
