"""Bad input gets a clear error naming what was wrong, and changes nothing."""

import numpy as np
import pytest

import fusedopt


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=-0.1), r"learning_rate must be a finite number >= 0, got -0.1"),
    (dict(beta_1=1.2), r"beta_1 must be in \[0, 1\), got 1.2"),
    (dict(beta_2=1.0), r"beta_2 must be in \[0, 1\), got 1.0"),
    (dict(beta_1=-0.1), r"beta_1 must be in \[0, 1\)"),
    (dict(epsilon=-1e-8), r"epsilon must be a finite number >= 0"),
    (dict(amsgrad="yes"), r"amsgrad must be True or False"),
    (dict(weight_decay=-1.0), r"weight_decay must be a finite number >= 0"),
    (dict(convention="jax"), r"convention must be one of keras, torch, got 'jax'"),
    (dict(backend="tpu"), r"backend must be one of auto, cuda, cpu, unfused, got 'tpu'"),
    (dict(loss_scale_factor=128.0), r"loss_scale_factor=128.0 is not supported"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fusedopt.Adam(**kwargs)


def test_unknown_argument():
    with pytest.raises(TypeError, match=r"unexpected arguments \['betas'\]"):
        fusedopt.Adam(betas=(0.9, 0.99))


def _model(n=10, size=5):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(np.float32) for _ in range(n)]
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(n)]
    return params, grads


def _assert_untouched(params, before, opt):
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    assert opt.iterations == 0


BAD_AT_7 = {
    "shape": (lambda p, g: (p, np.zeros((6,), np.float32)), r"param 7: param and grad shapes differ: \(5,\) vs \(6,\)"),
    "grad dtype": (lambda p, g: (p, g.astype(np.float64)), r"param 7: grad dtype float64 cannot update a float32 param.*\.astype\(float32\)"),
    "dtype": (lambda p, g: (p.astype(np.int32), g.astype(np.int32)), r"param 7 has dtype int32; adam supports float32, float64, float16, bfloat16 params"),
    "float16 grad": (lambda p, g: (p, g.astype(np.float16)), r"param 7: grad dtype float16 cannot update a float32 param"),
    "read-only": (lambda p, g: (np.frombuffer(p.tobytes(), np.float32), g), r"param 7 is read-only"),
    "view": (lambda p, g: (np.zeros(10, np.float32)[::2], g), r"param 7 is a non-contiguous view"),
    "list": (lambda p, g: (p, list(g)), r"param 7: the grad is a list"),
}


@pytest.mark.parametrize("backend", ["auto", "cpu", "unfused"])
@pytest.mark.parametrize("case", sorted(BAD_AT_7))
def test_bad_pair_at_7_changes_nothing(case, backend):
    params, grads = _model()
    make, match = BAD_AT_7[case]
    params[7], grads[7] = make(params[7], grads[7])
    before = [p.copy() for p in params]
    opt = fusedopt.Adam(backend=backend)
    with pytest.raises((ValueError, TypeError), match=match):
        opt.apply_gradients(zip(grads, params))
    _assert_untouched(params, before, opt)


def test_bad_pair_after_build_changes_nothing():
    params, grads = _model()
    opt = fusedopt.Adam()
    opt.apply_gradients(zip(grads, params))
    before = [p.copy() for p in params]
    state_before = [s.copy() for s in opt.variables]
    grads[7] = grads[7][:4]
    with pytest.raises(ValueError, match=r"param 7: param and grad shapes differ"):
        opt.apply_gradients(zip(grads, params))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    for s, b in zip(opt.variables, state_before):
        np.testing.assert_array_equal(s, b)
    assert opt.iterations == 1


def test_unknown_param_after_build():
    params, grads = _model()
    opt = fusedopt.Adam()
    opt.apply_gradients(zip(grads, params))
    with pytest.raises(KeyError, match=r"not one of them"):
        opt.apply_gradients([(grads[0], params[0].copy())])


def test_param_twice_in_one_call():
    params, grads = _model(2)
    opt = fusedopt.Adam()
    opt.build(params)
    with pytest.raises(ValueError, match="appears twice"):
        opt.apply_gradients([(grads[0], params[0]), (grads[1], params[0])])


def test_mixed_array_types_are_refused():
    cupy = pytest.importorskip("cupy")
    try:
        dev = cupy.zeros(5, np.float32)
    except Exception:  # no device: construct the check through the pure dispatcher instead
        from fusedopt.engine.dispatch import select
        with pytest.raises(TypeError, match=r"mixes array types \['cupy', 'numpy'\]"):
            select("auto", ["numpy", "cupy"])
        return
    params, grads = _model(2)
    with pytest.raises(TypeError, match="mixes array types"):
        fusedopt.Adam().apply_gradients([(grads[0], params[0]), (dev, dev)])


def test_cuda_backend_refuses_numpy_arrays():
    params, grads = _model(1)
    before = params[0].copy()
    with pytest.raises((TypeError, ImportError, RuntimeError)):
        fusedopt.Adam(backend="cuda").apply_gradients(zip(grads, params))
    np.testing.assert_array_equal(params[0], before)


def test_all_grads_none():
    params, _ = _model(2)
    with pytest.raises(ValueError, match="every gradient is None"):
        fusedopt.Adam().apply_gradients([(None, p) for p in params])


def test_none_grad_skips_its_param():
    params, grads = _model(2)
    before = params[1].copy()
    fusedopt.Adam().apply_gradients([(grads[0], params[0]), (None, params[1])])
    np.testing.assert_array_equal(params[1], before)


def test_non_contiguous_grad_is_read_correctly():
    params, grads = _model(1, size=8)
    wide = np.zeros(16, np.float32)
    wide[::2] = grads[0]
    a, b = params[0].copy(), params[0].copy()
    fusedopt.Adam(learning_rate=0.1).apply_gradients([(wide[::2], a)])
    fusedopt.Adam(learning_rate=0.1).apply_gradients([(grads[0], b)])
    np.testing.assert_array_equal(a, b)


def test_functional_state_mismatch():
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"state 'v' must match the param's shape \(4,\)"):
        fusedopt.functional.adam_step(p, p.copy(), np.zeros(4, np.float32),
                                      np.zeros(3, np.float32), step=1)
    with pytest.raises(ValueError, match="step is the 1-based step count"):
        fusedopt.functional.adam_step(p, p.copy(), p.copy(), p.copy(), step=0)
