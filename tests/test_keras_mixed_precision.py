"""fusedopt.keras under Keras' loss scaling and mixed-precision policies."""

import keras
import numpy as np
import pytest
from keras_fit import build_model, data, fit, max_diff, variables, weights
from tolerances import KERAS_FIT, KERAS_FIT_MIXED

import fusedopt.keras


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


def test_bfloat16_variables_step_in_place_with_bfloat16_moments():
    """bfloat16 variables (a "bfloat16" dtype policy makes them) get bf16 moments; the fused
    step updates them in place, in float32 math rounded once: step 1 of Adam is
    p - lr g / (|g| + eps), m = (1 - b1) g, v = (1 - b2) g**2, each within 1 bf16 ulp of
    that float64 value rounded to bfloat16."""
    import ml_dtypes
    var = keras.Variable(np.linspace(-1, 1, 64, dtype=np.float32), dtype="bfloat16", name="w")
    assert var.dtype == "bfloat16"
    opt = fusedopt.keras.Adam(learning_rate=0.01)
    p0 = keras.ops.convert_to_numpy(var).astype(np.float64)
    g = np.random.default_rng(0).standard_normal(64).astype(ml_dtypes.bfloat16)
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    g64 = g.astype(np.float64)
    want = {"param": p0 - 0.01 * g64 / (np.abs(g64) + 1e-7),
            "m": 0.1 * g64, "v": 0.001 * g64 * g64}
    got = {"param": var, "m": opt._momentums[0], "v": opt._velocities[0]}
    for key, value in got.items():
        assert value.dtype == "bfloat16", key
        have = keras.ops.convert_to_numpy(value).astype(np.float64)
        rounded = want[key].astype(ml_dtypes.bfloat16).astype(np.float64)
        # a bf16 ulp: a float32 one at the same exponent times 2**16 (16 fewer mantissa bits)
        ulp = np.spacing(np.abs(rounded).astype(np.float32)).astype(np.float64) * 2.0 ** 16
        assert np.all(np.abs(have - rounded) <= ulp), key
    assert [launch.group.dtype for launch in opt._fused.engine.launch_groups()] == ["bfloat16"]


def test_float16_variables_are_refused_with_the_fix():
    var = keras.Variable(np.ones(8, np.float32), dtype="float16", name="w16")
    opt = fusedopt.keras.Adam()
    with pytest.raises(TypeError, match="is float16.*'mixed_float16' policy"):
        opt.apply_gradients([(keras.ops.ones(8, dtype="float16"), var)])
    assert np.all(keras.ops.convert_to_numpy(var) == 1)
