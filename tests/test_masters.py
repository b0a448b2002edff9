"""Master weights: an fp32 master beside each 16-bit param, and bfloat16 remainders.

- ``master_weights=True``: at every step the master equals, bit for bit, the param of the
  same optimizer run on float32 params (started from the 16-bit values, given the same
  grads), its state equals that run's, and the 16-bit param is the master rounded to
  nearest (ties away from zero, tests/reference.py ``nearest_away``);
- ``master_weights="remainder"``: at every step the same param bits, state bits and
  (rebuilt) master bits as ``master_weights=True``.

Every optimizer runs through the CUDA host execution; the CPU backend runs Adam (every
case) and Lion (16-bit grads): its master handling is one piece of the generic loop, the same
for every rule, and each loop specialization it compiles costs seconds of a cold suite.
"""

import numpy as np
import pytest
import reference
import storage_runs as runs

from cases import MATRIX_ONLY, assert_refused

from fusedopt.algorithms.registry import REGISTRY

#: Muon keeps plain storage only (tests/cases.py MATRIX_ONLY).
NAMES = sorted(set(REGISTRY) - MATRIX_ONLY)
STEPS = 30
#: Every optimizer through the CUDA backend (on the host) where it has CUDA kernels.
CASES = [("cuda" if REGISTRY[n].on_cuda else "cpu", n) for n in NAMES] + [
    ("cpu", "adam"), ("cpu", "lion")]


def _cases(grad_dtypes):
    """(backend, name, grad dtype): every case through the CUDA host, on the CPU Adam with
    every grad dtype and Lion with the param's (see the module docstring)."""
    return [(b, n, g) for b, n in CASES for g in grad_dtypes
            if b == "cuda" or n == "adam" or g != "float32"]


MASTER_CASES = _cases(["param", "float32"])
REMAINDER_CASES = _cases(["bfloat16", "float32"])


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).astype(np.float32).view(np.uint32)


def _grads_of(grads, dtype):
    """The grads as ``dtype`` values (float64), so every run gets the same numbers."""
    dt = reference.as_dtype(dtype)
    return [[np.asarray(g).astype(dt).astype(np.float64) for g in step] for step in grads]


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("backend, name, grad_dtype", MASTER_CASES, indirect=["backend"],
                         ids=[f"{b}-{n}-{g}" for b, n, g in MASTER_CASES])
def test_master_is_the_float32_run(backend, name, param_dtype, grad_dtype):
    if "bfloat16" not in REGISTRY[name].dtypes:  # Adafactor: no 16-bit params
        return assert_refused(name, param_dtype)
    spec = REGISTRY[name]
    hp, convention = runs.setting(name)
    params, grads = runs.make_problem(runs.SHAPES, STEPS, seed=3)
    params = [reference.rounded(p, param_dtype) for p in params]  # the 16-bit start
    grads = _grads_of(grads, param_dtype)  # 16-bit values: exact in float32 too
    grad_dtype = param_dtype if grad_dtype == "param" else grad_dtype
    _, _, plain = runs.run(spec, hp, convention, params, grads, backend,
                           param_dtype="float32")
    _, _, master = runs.run(spec, hp, convention, params, grads, backend,
                            param_dtype=param_dtype, master_weights=True,
                            grad_dtype=grad_dtype)
    for t, (a, b) in enumerate(zip(plain, master)):
        for k in range(len(params)):
            where = f"{name} {backend} {param_dtype}, step {t}, tensor {k}"
            assert np.array_equal(_bits(a.params[k]), _bits(b.states[k]["master"])), where
            for slot, value in a.states[k].items():
                assert np.array_equal(_bits(value), _bits(b.states[k][slot])), f"{where} {slot}"
            rounded = reference.nearest_away(b.states[k]["master"], param_dtype)
            assert np.array_equal(rounded, b.params[k]), f"{where}: param not the master rounded"
    assert any(not np.array_equal(x, y) for x, y in zip(master[0].params, master[-1].params))


@pytest.mark.parametrize("backend, name, grad_dtype", REMAINDER_CASES, indirect=["backend"],
                         ids=[f"{b}-{n}-{g}" for b, n, g in REMAINDER_CASES])
def test_remainder_is_the_master_in_two_bytes(backend, name, grad_dtype):
    if "bfloat16" not in REGISTRY[name].dtypes:  # Adafactor: no 16-bit params
        return assert_refused(name, "bfloat16")
    spec = REGISTRY[name]
    hp, convention = runs.setting(name)
    params, grads = runs.make_problem(runs.SHAPES, STEPS, seed=4)
    params = [reference.rounded(p, "bfloat16") for p in params]
    grads = _grads_of(grads, "bfloat16")
    runs_by_mode = {}
    for mode in (True, "remainder"):
        engine, _, taken = runs.run(spec, hp, convention, params, grads, backend,
                                    param_dtype="bfloat16", master_weights=mode,
                                    grad_dtype=grad_dtype)
        runs_by_mode[mode] = taken
    assert [s.dtype.name for s in engine.states[0][-1:]] == ["int16"]
    for t, (a, b) in enumerate(zip(runs_by_mode[True], runs_by_mode["remainder"])):
        for k in range(len(params)):
            where = f"{name} {backend}, step {t}, tensor {k}"
            assert np.array_equal(_bits(a.params[k]), _bits(b.params[k])), f"{where} param"
            assert np.array_equal(_bits(a.states[k]["master"]), _bits(runs.master_of(b, k))), \
                f"{where}: the param and its remainder are not the master"
            for slot, value in a.states[k].items():
                if slot != "master":
                    assert np.array_equal(_bits(value), _bits(b.states[k][slot])), \
                        f"{where} {slot}"
