"""16-bit params and state against the float64 reference with the same storage roundings.

For each registered optimizer, bfloat16 and float16 params, with float32 and with bfloat16
state, 50 steps: at every step every stored value is within one ulp of the reference
started from the values stored the step before (tests/storage_runs.py says why, and where
float32 arithmetic instead of the storage decides the bound), on the CPU backend and
through the CUDA host execution (the .cu kernels built with g++, tests/cuda_host).
"""

import pytest
import storage_runs as runs
from cases import MATRIX_ONLY, assert_refused

from fusedopt.algorithms.registry import REGISTRY

#: Muon left out (tests/cases.py MATRIX_ONLY): it steps 2-D params with state in the
#: param's dtype only (float32 state for 16-bit params is refused), and its update mixes
#: every element of a matrix, so a one-ulp check per stored element does not apply; its
#: bfloat16 Newton-Schulz is bounded in tests/test_muon.py.
NAMES = sorted(set(REGISTRY) - MATRIX_ONLY)
PARAMS = ("bfloat16", "float16")
STATES = ("float32", "bfloat16")
BACKENDS = ("cpu", "cuda")


#: (optimizer, backend): a CUDA run of every optimizer with CUDA kernels.
RUNS = [(n, b) for n in NAMES for b in BACKENDS if b != "cuda" or REGISTRY[n].on_cuda]


@pytest.mark.parametrize("state_dtype", STATES)
@pytest.mark.parametrize("param_dtype", PARAMS)
@pytest.mark.parametrize("name, backend", RUNS, indirect=["backend"])
def test_every_stored_value_within_an_ulp(name, param_dtype, state_dtype, backend):
    if param_dtype not in REGISTRY[name].dtypes:  # Adafactor: factored moments, 32/64-bit
        return assert_refused(name, param_dtype)
    spec = REGISTRY[name]
    hp, convention = runs.setting(name)
    params, grads = runs.make_problem(runs.SHAPES, runs.STEPS, seed=NAMES.index(name))
    _, _, taken = runs.run(spec, hp, convention, params, grads, backend,
                           param_dtype=param_dtype, state_dtype=state_dtype)
    what = f"{name} {backend}, {param_dtype} params, {state_dtype} state"
    tally = runs.check_against_reference(spec, hp, convention, grads, taken, param_dtype,
                                         state_dtype, what)
    tally.check(what)


def test_the_bound_catches_a_wrong_rounding():
    """A store that truncates instead of rounding to nearest even stays within one ulp, but
    differs from the reference in about half the values: the check fails on that. Here the
    params of a correct run are moved one ulp toward zero at every other element, as
    truncation would where nearest even rounded up."""
    spec = REGISTRY["sgd"]
    hp, convention = runs.setting("sgd")
    params, grads = runs.make_problem(runs.SHAPES, 5, seed=0)
    _, _, taken = runs.run(spec, hp, convention, params, grads, "cpu",
                           param_dtype="bfloat16", state_dtype="bfloat16")
    tally = runs.check_against_reference(spec, hp, convention, grads, taken, "bfloat16",
                                         "bfloat16", "correct")
    tally.check("correct")
    skewed = [taken[0]] + [runs.Snapshot([_toward_zero(p) for p in s.params], s.states)
                           for s in taken[1:]]
    with pytest.raises(AssertionError, match="differ from the reference's rounding|more than"):
        runs.check_against_reference(spec, hp, convention, grads, skewed, "bfloat16",
                                     "bfloat16", "skewed").check("skewed")


def _toward_zero(values):
    """bfloat16 ``values`` (as float64), every other one moved one ulp toward zero."""
    import numpy as np
    import reference
    bits = values.astype(reference.as_dtype("bfloat16")).view(np.uint16).copy()
    flat = bits.reshape(-1)
    move = (np.arange(flat.size) % 2 == 0) & ((flat & 0x7FFF) != 0)
    flat[move] -= np.uint16(1)
    return bits.view(reference.as_dtype("bfloat16")).astype(np.float64)
