"""Copies of optimizers: ``pickle`` and ``copy.deepcopy`` work before and after the first step,
the copy steps bit for bit like the original, and the two share no memory.

A copy holds copies of the params (pickle alone cannot keep the caller's arrays);
``copy.bind(params)`` points it at the arrays it should update. Copied together with the
params (``copy.deepcopy((opt, params))``, one ``pickle.dumps((opt, params))``), the copy is
bound to the copied params already.
"""

import copy
import pickle

import checkpoint_worker as worker
import numpy as np
import pytest
import variants

from cases import MATRIX_ONLY

from fusedopt.algorithms.registry import REGISTRY

#: Muon left out: the problems are 1-D (tests/cases.py MATRIX_ONLY).
NAMES = sorted(set(REGISTRY) - MATRIX_ONLY)
COPIERS = {"pickle": lambda x: pickle.loads(pickle.dumps(x)), "deepcopy": copy.deepcopy}


def _problem(name, steps=5):
    rng = np.random.default_rng(len(name))
    params = [rng.standard_normal(s).astype(np.float32) for s in worker.SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in worker.SHAPES]
             for _ in range(steps)]
    return params, grads


def _make(name, backend="cpu"):
    hp, convention = worker.fullest(REGISTRY[name])
    return variants.make(name, hp, convention, backend)


def _assert_no_shared_memory(a_arrays, b_arrays):
    for a in a_arrays:
        for b in b_arrays:
            assert not np.shares_memory(a, b)


def _check_copy_steps_alike(name, copier, stepped_before, backend="cpu"):
    params, grads = _problem(name)
    opt = _make(name, backend)
    for g in grads[:stepped_before]:
        opt.apply_gradients(zip(g, params))
    twin = copier(opt)
    twin_params = [p.copy() for p in params]
    twin.bind(twin_params)
    assert twin.iterations == opt.iterations and twin.get_config() == opt.get_config()
    for g in grads[stepped_before:]:
        opt.apply_gradients(zip(g, params))
        twin.apply_gradients(zip(g, twin_params))
    assert twin.iterations == opt.iterations == len(grads)
    for a, b in zip(params, twin_params):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(opt.variables, twin.variables):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    _assert_no_shared_memory(opt.variables + params, twin.variables + twin_params)


@pytest.mark.parametrize("stepped_before", [0, 2], ids=["before-first-step", "after-2-steps"])
@pytest.mark.parametrize("how", sorted(COPIERS))
@pytest.mark.parametrize("name", NAMES)
def test_copy_steps_bit_for_bit_like_the_original(name, how, stepped_before):
    _check_copy_steps_alike(name, COPIERS[how], stepped_before)


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_copy_through_cuda_host_execution(host_cuda, how):
    """Launch tables hold this process's addresses: a copy drops them and builds its own."""
    _check_copy_steps_alike("adam", COPIERS[how], 2, backend="cuda")
    assert host_cuda.launches


@pytest.mark.parametrize("how", sorted(COPIERS))
def test_copied_together_with_its_params_the_copy_is_bound_to_them(how):
    params, grads = _problem("adam")
    opt = _make("adam")
    opt.apply_gradients(zip(grads[0], params))
    twin, twin_params = COPIERS[how]((opt, params))
    for g in grads[1:]:
        opt.apply_gradients(zip(g, params))
        twin.apply_gradients(zip(g, twin_params))
    for a, b in zip(params, twin_params):
        assert a.tobytes() == b.tobytes()
    _assert_no_shared_memory(params, twin_params)


def test_a_copy_alone_holds_copies_of_the_params_and_refuses_the_originals():
    params, grads = _problem("adam")
    opt = _make("adam")
    opt.apply_gradients(zip(grads[0], params))
    twin = pickle.loads(pickle.dumps(opt))
    with pytest.raises(KeyError, match="not one of them"):
        twin.apply_gradients(zip(grads[1], params))
    for held, p in zip(twin._params, params):
        assert held.tobytes() == p.tobytes() and not np.shares_memory(held, p)


def test_bind_checks_every_param_before_replacing_any():
    params, grads = _problem("adam")
    opt = _make("adam")
    opt.apply_gradients(zip(grads[0], params))
    held = list(opt._params)
    wrong = [p.copy() for p in params]
    wrong[2] = wrong[2].reshape(37 * 53)
    with pytest.raises(ValueError, match=r"param 2: the new param's shape is \(1961,\), the one "
                                         r"it replaces has \(37, 53\)"):
        opt.bind(wrong)
    with pytest.raises(ValueError, match="bind got 4 params, this optimizer holds 5"):
        opt.bind(wrong[:4])
    assert all(a is b for a, b in zip(opt._params, held))


def _device_count() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_device_count() == 0, reason="CuPy sees no CUDA device")
@pytest.mark.parametrize("how", sorted(COPIERS))
def test_cupy_optimizer_copies_step_alike(how):
    """CuPy arrays pickle through CuPy's own support (to the host and back to the device)."""
    import cupy
    params, grads = _problem("adam")
    params = [cupy.asarray(p) for p in params]
    opt = _make("adam", backend="auto")
    opt.apply_gradients([(cupy.asarray(g), p) for g, p in zip(grads[0], params)])
    twin = COPIERS[how](opt)
    twin_params = [p.copy() for p in params]
    twin.bind(twin_params)
    for g in grads[1:]:
        opt.apply_gradients([(cupy.asarray(x), p) for x, p in zip(g, params)])
        twin.apply_gradients([(cupy.asarray(x), p) for x, p in zip(g, twin_params)])
    for a, b in zip(params, twin_params):
        assert a.get().tobytes() == b.get().tobytes()
