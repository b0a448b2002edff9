"""Storage the optimizer cannot keep gets a clear error naming the param and the fix, and
changes nothing: no param, no state, no count."""

import ml_dtypes
import numpy as np
import pytest

import fusedopt

BF16 = ml_dtypes.bfloat16


def _model(dtype, n=10, size=6):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(dtype) for _ in range(n)]
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(n)]
    return params, grads


def _refused(opt, params, grads, match, error=(ValueError, TypeError)):
    before = [p.copy() for p in params]
    with pytest.raises(error, match=match):
        opt.apply_gradients(zip(grads, params))
    for p, b in zip(params, before):
        assert np.array_equal(p.view(np.uint8), b.view(np.uint8))
    assert opt.iterations == 0 and not opt.variables


def test_master_weights_on_float32_params():
    params, grads = _model(np.float32)
    _refused(fusedopt.Adam(master_weights=True), params, grads,
             r"param 0 is float32; master_weights=True is not possible: master weights are "
             r"for 16-bit params")


def test_one_float32_param_among_bfloat16_ones_with_master_weights():
    params, grads = _model(BF16)
    params[7], grads[7] = params[7].astype(np.float32), grads[7].astype(np.float32)
    _refused(fusedopt.Adam(master_weights="remainder"), params, grads,
             r"param 7 is float32; master_weights='remainder' is not possible")


def test_remainder_masters_on_float16_params():
    params, grads = _model(np.float16)
    _refused(fusedopt.Adam(master_weights="remainder"), params, grads,
             r"param 0 is float16; master_weights='remainder' is not possible: remainder "
             r"masters need bfloat16 params .* use master_weights=True for float16")


@pytest.mark.parametrize("param, grad, match", [
    (BF16, np.float16, r"param 7: grad dtype float16 cannot update a bfloat16 param"),
    (np.float32, BF16, r"param 7: grad dtype bfloat16 cannot update a float32 param"),
    (BF16, np.float32, r"param 7: grad dtype float32 cannot update a bfloat16 param here .*"
                       r"float32 grads go with an fp32 master: pass master_weights=True"),
    (np.float16, np.float64, r"param 7: grad dtype float64 cannot update a float16 param"),
])
def test_a_grad_dtype_that_cannot_go_with_the_param(param, grad, match):
    params, grads = _model(param)
    grads[7] = grads[7].astype(grad)
    _refused(fusedopt.Adam(), params, grads, match)


def test_a_bad_grad_dtype_after_build_changes_nothing():
    params, grads = _model(BF16)
    opt = fusedopt.Adam(master_weights=True)
    opt.apply_gradients(zip(grads, params))
    before = [p.copy() for p in params] + [s.copy() for s in opt.variables]
    grads[3] = grads[3].astype(np.float16)
    with pytest.raises(TypeError, match=r"param 3: grad dtype float16 cannot update"):
        opt.apply_gradients(zip(grads, params))
    for a, b in zip(params + opt.variables, before):
        assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    assert opt.iterations == 1


@pytest.mark.parametrize("kwargs, dtype, match", [
    (dict(state_dtype="bfloat16", master_weights=True), BF16,
     r"param 0 is bfloat16 kept with master_weights=True, whose state can be float32, not "
     r"state_dtype='bfloat16'; a float32 master keeps float32 state"),
    (dict(state_dtype="float64"), BF16,
     r"param 0 is bfloat16, whose state can be float32 or bfloat16, not state_dtype='float64'"),
    (dict(state_dtype="bfloat16"), np.float64,
     r"param 0 is float64, whose state can be float64, not state_dtype='bfloat16'"),
])
def test_state_dtypes_a_param_cannot_have(kwargs, dtype, match):
    params, grads = _model(dtype)
    _refused(fusedopt.Adam(**kwargs), params, grads, match)


@pytest.mark.parametrize("kwargs, match", [
    (dict(state_dtype="int8"), r"state_dtype must be None .*, 'float32', 'bfloat16', "
                               r"'float64', 'param' .*'q8' or 'q4' .*, got 'int8'"),
    (dict(master_weights="yes"), r"master_weights must be False, True or 'remainder', got "
                                 r"'yes'"),
    (dict(master_weights=1), r"master_weights must be False, True or 'remainder', got 1"),
])
def test_bad_storage_arguments_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.SGD(**kwargs)


def test_functional_update_wants_one_state_dtype():
    params, grads = _model(BF16, n=2)
    states = [[np.zeros(6, np.float32), np.zeros(6, np.float32)],
              [np.zeros(6, BF16), np.zeros(6, BF16)]]
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match=r"param 1: state 'm' must match the param's shape "
                                         r"\(6,\) and dtype float32, got \(6,\) bfloat16"):
        fusedopt.functional.update("adam", params, grads, states, step=1)
    assert all(np.array_equal(a.view(np.uint16), b.view(np.uint16))
               for a, b in zip(params, before))


def test_a_checkpoint_whose_state_dtypes_do_not_match():
    params, grads = _model(BF16, n=3)
    saved = fusedopt.Adam(state_dtype="bfloat16")
    saved.apply_gradients(zip(grads, params))
    checkpoint = saved.state_dict()
    target = fusedopt.Adam()  # float32 state
    target.apply_gradients(zip(grads, [p.copy() for p in params]))
    before = [s.copy() for s in target.variables]
    with pytest.raises(ValueError, match=r"param 0: saved 'm' is bfloat16, this optimizer "
                                         r"keeps it in float32; load it into an optimizer "
                                         r"made with the state_dtype and master_weights"):
        target.load_state_dict(checkpoint)
    assert all(np.array_equal(a, b) for a, b in zip(target.variables, before))
    assert target.iterations == 1


def test_a_checkpoint_with_other_master_slots():
    params, grads = _model(BF16, n=2)
    saved = fusedopt.Adam(master_weights=True)
    saved.apply_gradients(zip(grads, params))
    target = fusedopt.Adam(master_weights="remainder")
    target.apply_gradients(zip(grads, [p.copy() for p in params]))
    with pytest.raises(ValueError, match=r"param 0: saved slots \['m', 'master', 'v'\] differ "
                                         r"from \['m', 'v', 'remainder'\]"):
        target.load_state_dict(saved.state_dict())
