"""fusedopt.LossScaleOptimizer against the real keras.optimizers.LossScaleOptimizer.

Both wrap an Adam (Keras 3, torch backend) and get the same scaled grads - each from its
own current scale, as a training loop computes them from ``scale_loss`` - with forced
overflow steps (an inf in one grad): the scale sequences must be equal, and the params
within the peer tolerance, at every step. Then the device path of the same rule runs
through the CUDA host execution with no host read, against the CPU's scale sequence.
"""

import numpy as np
import pytest
from tolerances import VS_PEER_FLOAT32

import fusedopt

STEPS = 14
OVERFLOW = {2, 3, 9}      # steps whose grads hold an inf
GROWTH = 3                # dynamic_growth_steps: the scale doubles within the run
SHAPES = ((4,), (3, 5))


def _raw_grads(step):
    rng = np.random.default_rng(50 + step)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _scaled(step, scale):
    grads = [g * np.float32(scale) for g in _raw_grads(step)]
    if step in OVERFLOW:
        grads[1][1, 2] = np.inf
    return grads


def _start():
    rng = np.random.default_rng(7)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _run_fusedopt(backend="cpu"):
    params = _start()
    opt = fusedopt.LossScaleOptimizer(fusedopt.Adam(learning_rate=0.05, backend=backend),
                                      initial_scale=2.0**10, dynamic_growth_steps=GROWTH)
    scales, trajectory = [], []
    for t in range(STEPS):
        opt.apply_gradients(zip(_scaled(t, opt.dynamic_scale), params))
        scales.append(opt.dynamic_scale)
        trajectory.append([p.copy() for p in params])
    return opt, scales, trajectory


def test_scale_sequence_and_params_equal_keras():
    keras = pytest.importorskip("keras")
    import torch
    start = _start()
    variables = [keras.Variable(p) for p in start]
    theirs = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(learning_rate=0.05),
                                                 initial_scale=2.0**10,
                                                 dynamic_growth_steps=GROWTH)
    ours, scales, trajectory = _run_fusedopt()
    for t in range(STEPS):
        keras_scale = float(theirs.dynamic_scale) if theirs.built else theirs.initial_scale
        grads = [torch.as_tensor(g) for g in _scaled(t, keras_scale)]
        theirs.apply_gradients(zip(grads, variables))
        assert float(theirs.dynamic_scale) == scales[t], f"step {t}: scale"
        for ours_p, v in zip(trajectory[t], variables):
            np.testing.assert_allclose(ours_p, np.asarray(v), rtol=0, atol=VS_PEER_FLOAT32,
                                       err_msg=f"step {t}")
    assert int(theirs.iterations) == ours.iterations == STEPS - len(OVERFLOW)
    assert len(set(scales)) > 2  # it halved and grew


def test_the_rule_halves_and_grows():
    _, scales, _ = _run_fusedopt()
    expected, scale, count = [], 2.0**10, 0
    for t in range(STEPS):
        if t in OVERFLOW:
            scale, count = scale / 2, 0
        elif count == GROWTH - 1:
            scale, count = scale * 2, 0
        else:
            count += 1
        expected.append(scale)
    assert scales == expected


def test_on_the_device_without_a_host_read(host_built):
    from cuda_host import HostRuntime

    from fusedopt.backends.cuda import runtime
    host = HostRuntime(host_built, events="never")
    previous = runtime.install(host)
    try:
        params = _start()
        opt = fusedopt.LossScaleOptimizer(fusedopt.Adam(learning_rate=0.05, backend="cuda"),
                                          initial_scale=2.0**10, dynamic_growth_steps=GROWTH)
        scales = []
        for t in range(STEPS):
            scale = np.asarray(opt._scale)  # the host runtime's device memory: no read
            opt.apply_gradients(zip(_scaled(t, scale), params))
            scales.append(np.asarray(opt._scale).copy())
        assert host.waits == 0
        _, cpu_scales, cpu_trajectory = _run_fusedopt()
        assert [float(s) for s in scales] == cpu_scales
        for a, b in zip(params, cpu_trajectory[-1]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert opt.iterations == STEPS - len(OVERFLOW)
    finally:
        runtime.install(previous)


def test_config_round_trip_and_bad_arguments():
    opt = fusedopt.LossScaleOptimizer(fusedopt.SGD(learning_rate=0.3), initial_scale=64.0,
                                      dynamic_growth_steps=5)
    again = fusedopt.LossScaleOptimizer.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert again.inner_optimizer.learning_rate == 0.3 and again.dynamic_scale == 64.0
    with pytest.raises(TypeError, match="inner_optimizer must be a fusedopt optimizer"):
        fusedopt.LossScaleOptimizer(object())
    with pytest.raises(ValueError, match="initial_scale must be a positive finite number"):
        fusedopt.LossScaleOptimizer(fusedopt.SGD(), initial_scale=0.0)
    with pytest.raises(ValueError, match="dynamic_growth_steps must be an int >= 1"):
        fusedopt.LossScaleOptimizer(fusedopt.SGD(), dynamic_growth_steps=0)
