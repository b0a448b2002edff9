"""Fused loss scaling: ``apply_gradients(..., grad_scale=s)`` on every backend and storage.

- an inf or NaN at one element of one grad of a 3-tensor call changes nothing - no param,
  no state, no ``iterations`` - and ``found_inf`` says so; the next finite step applies;
- finite grads scaled by a power of two give the bits of the unscaled grads stepped
  normally (tests/test_engine.py does float32 on the CPU for every variant; here 16-bit
  storage on the CPU, and every variant and storage through the CUDA host execution);
- the inf test is exact: finite float64 grads whose squares overflow are not flagged, and
  a value clip does not hide an inf from it.
"""

import numpy as np
import pytest
import reference
import variants
from cases import MATRIX_ONLY, assert_refused

import fusedopt
from fusedopt.algorithms.registry import REGISTRY

SHAPES = ((5,), (4097,), (3, 7))
DTYPES = ("float32", "bfloat16", "float16")
MODES = {"plain": False, "master": True, "remainder": "remainder"}


def _classes():
    return {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}


def _make(name, hp, convention, backend, **storage):
    return _classes()[name](**hp, convention=convention, backend=backend, **storage)


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 3).astype(reference.as_dtype(dtype)) for s in SHAPES]


def _grads(params, step, scale=1.0, dtype=None):
    rng = np.random.default_rng(100 + step)
    dt = reference.as_dtype(dtype) if dtype else params[0].dtype
    return [(rng.standard_normal(p.shape) * scale).astype(dt) for p in params]


def _bits(arrays):
    return [np.ascontiguousarray(a).view(np.uint8).copy() for a in arrays]


#: Every way a param can be kept: (dtype, mode).
KEPT = [("float32", "plain"), ("bfloat16", "plain"), ("float16", "plain"),
        ("bfloat16", "master"), ("float16", "master"), ("bfloat16", "remainder")]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("dtype, mode", KEPT)
@pytest.mark.parametrize("backend", ["cpu", "cuda"], indirect=True)
def test_one_bad_element_of_one_grad_changes_nothing(backend, dtype, mode, bad):
    params = _params(dtype)
    opt = fusedopt.Adam(learning_rate=0.1, backend=backend, master_weights=MODES[mode])
    opt.apply_gradients(zip(_grads(params, 0, 8.0), params), grad_scale=8.0)
    before = _bits(params) + _bits(opt.variables)
    grads = _grads(params, 1, 8.0)
    grads[1][2049] = bad  # one element of the middle tensor
    opt.apply_gradients(zip(grads, params), grad_scale=8.0)
    assert opt.found_inf is True and opt.iterations == 1
    assert all(np.array_equal(x, y) for x, y in zip(before, _bits(params) + _bits(opt.variables)))
    opt.apply_gradients(zip(_grads(params, 1, 8.0), params), grad_scale=8.0)
    assert opt.found_inf is False and opt.iterations == 2
    assert not all(np.array_equal(x, y) for x, y in zip(before, _bits(params)))


@pytest.mark.parametrize("backend", ["cpu", "cuda"], indirect=True)
def test_huge_finite_float64_grads_are_not_an_overflow(backend):
    """Squares of 1e200 overflow to inf; the inf/NaN test is its own, so the step applies."""
    params = [np.ones(s) for s in SHAPES]
    opt = fusedopt.SGD(learning_rate=1e-200, backend=backend)
    grads = [np.full(p.shape, 1e200) for p in params]
    opt.apply_gradients(zip(grads, params), grad_scale=2.0)
    assert opt.found_inf is False and opt.iterations == 1
    np.testing.assert_allclose(params[0], 0.5)


@pytest.mark.parametrize("backend", ["cpu", "unfused", "cuda"], indirect=True)
def test_a_value_clip_does_not_hide_an_inf(backend):
    """The inf/NaN test sums the grads as stored: the clamp to clipvalue the step applies (and
    the launch table still holds from the step before) does not make an inf finite."""
    params = _params("float32")
    opt = fusedopt.SGD(learning_rate=0.1, clipvalue=0.5, backend=backend)
    opt.apply_gradients(zip(_grads(params, 0, 8.0), params), grad_scale=8.0)
    before = _bits(params)
    grads = _grads(params, 1, 8.0)
    grads[2][1, 3] = -np.inf
    opt.apply_gradients(zip(grads, params), grad_scale=8.0)
    assert opt.found_inf is True and opt.iterations == 1
    assert all(np.array_equal(x, y) for x, y in zip(before, _bits(params)))


def _power_of_two_case(name, hp, convention, backend, dtype, steps=4, **storage):
    plain, scaled = _params(dtype, 1), _params(dtype, 1)
    a = _make(name, hp, convention, backend, **storage)
    b = _make(name, hp, convention, backend, **storage)
    for t in range(steps):
        grads = _grads(plain, t)
        a.apply_gradients(zip(grads, plain))
        b.apply_gradients(zip([g * reference.as_dtype(dtype).type(1024.0) for g in grads],
                              scaled), grad_scale=1024.0)
    assert all(np.array_equal(x, y) for x, y in zip(_bits(plain), _bits(scaled)))
    assert all(np.array_equal(x, y) for x, y in zip(_bits(a.variables), _bits(b.variables)))
    assert a.iterations == b.iterations == steps


#: Every optimizer with bfloat16 params; float16's widening, the other 16-bit load before the
#: scale, with Adam's and Lion's rules (each case is a compiled loop of its own).
CPU_16BIT = [(name, "bfloat16") for name in sorted(set(REGISTRY) - MATRIX_ONLY)  # 1-D problems
             if REGISTRY[name].public] + [("adam", "float16"), ("lion", "float16")]


@pytest.mark.parametrize("name, dtype", CPU_16BIT)
def test_power_of_two_scale_gives_the_unscaled_bits_on_cpu_16bit(name, dtype):
    if dtype not in REGISTRY[name].dtypes:  # Adafactor: its factored moments, float32 or 64
        return assert_refused(name, dtype)
    hp, convention, _ = variants.variants(REGISTRY[name])[0]  # compiled by the storage tests
    _power_of_two_case(name, hp, convention, "cpu", dtype)


MATRIX = [(n, hp, c) for n, hp, c in variants.matrix()]
#: The variants with CUDA kernels, and their ids (optimizers with a class: loss scaling is
#: the classes' option).
CUDA_MATRIX, CUDA_IDS = zip(*[(case, i) for case, i in zip(MATRIX, variants.matrix_ids())
                              if REGISTRY[case[0]].on_cuda and REGISTRY[case[0]].public])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, hp, convention", CUDA_MATRIX, ids=CUDA_IDS)
def test_power_of_two_scale_gives_the_unscaled_bits_on_cuda(host_cuda, name, hp, convention,
                                                            dtype):
    if dtype not in REGISTRY[name].dtypes:  # Adafactor: its factored moments, float32 or 64
        return assert_refused(name, dtype)
    _power_of_two_case(name, hp, convention, "cuda", dtype, steps=3)


@pytest.mark.parametrize("mode", ["master", "remainder"])
def test_power_of_two_scale_with_masters_and_float32_grads(host_cuda, mode):
    _power_of_two_case("adam", {}, "keras", "cuda", "bfloat16", master_weights=MODES[mode])
    plain, scaled = _params("bfloat16", 2), _params("bfloat16", 2)
    a = fusedopt.Adam(backend="cuda", master_weights=MODES[mode])
    b = fusedopt.Adam(backend="cuda", master_weights=MODES[mode])
    for t in range(3):
        grads = _grads(plain, t, dtype="float32")
        a.apply_gradients(zip(grads, plain))
        b.apply_gradients(zip([g * np.float32(64.0) for g in grads], scaled), grad_scale=64.0)
    assert all(np.array_equal(x, y) for x, y in zip(_bits(plain), _bits(scaled)))
