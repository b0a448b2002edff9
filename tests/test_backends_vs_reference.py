"""Every backend of every optimizer against the float64 reference, on awkward sizes."""

import numpy as np
import pytest
import reference
from cases import AWKWARD_SHAPES, MATRIX_ONLY, SIGN_SENSITIVE, assert_refused, cases, problem
from tolerances import VS_REFERENCE

import fusedopt
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.memory.factored import slot_shape

STEPS = 10
MATRIX = [(name, conv, i, hp) for name in sorted(REGISTRY) for conv in ("keras", "torch")
          for i, hp in enumerate(cases(name, conv)) if name not in SIGN_SENSITIVE
          and not (name in MATRIX_ONLY and conv == "torch")]


def run_fused(name, hp, convention, backend, p, grads):
    spec = REGISTRY[name]
    flags = spec.flags({**spec.defaults(), **hp}, convention)
    init = spec.slot_init({**spec.defaults(), **hp})
    copies = {s.name for s in spec.slot_decls if s.from_param}  # schedule-free's z
    kinds = dict(zip(spec.slots(flags), spec.slot_shapes(flags)))  # Adafactor's factors
    slots = [p.copy() if name in copies else np.full_like(p, init) if kinds[name] is None
             else np.full(slot_shape(kinds[name], p.shape), init, p.dtype)
             for name in spec.slots(flags)]
    for t, g in enumerate(grads, start=1):
        fusedopt.functional.update(name, [p], [g], [slots], step=t, convention=convention,
                                   backend=backend, **hp)
    return p


def run_reference(name, hp, convention, p, grads):
    hp = {**REGISTRY[name].defaults(), **hp}
    state, p = {}, p.astype(np.float64)
    for t, g in enumerate(grads, start=1):
        p = reference.step(name, p, g, state, t, hp, convention)
    return p


@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("name,convention,case,hp", MATRIX,
                         ids=[f"{n}-{c}-{i}" for n, c, i, _ in MATRIX])
def test_float32_matches_reference(name, convention, case, hp, backend, shape):
    if name in MATRIX_ONLY and len(shape) != 2:
        return assert_refused(name, "float32", shape)
    p, grads = problem(shape, STEPS, seed=case)
    expected = run_reference(name, hp, convention, p, grads)
    got = run_fused(name, hp, convention, backend, p.copy(), grads)
    np.testing.assert_allclose(got, expected, **_float32_tolerance(hp))


def _float32_tolerance(hp) -> dict:
    """The float32 tolerance, plus, with weight decay, what its factor costs: decoupled
    decay multiplies by ``1 - lr * wd`` rounded to float32 (as torch and Keras on torch do),
    up to 2**-24 of the param each step, the same way every step."""
    tolerance = dict(VS_REFERENCE[np.float32])
    if hp.get("weight_decay"):
        tolerance["rtol"] += STEPS * 2.0**-24
    return tolerance


def _ends(found: list) -> list:
    """The first and the last case (the last has the most features on): each case is a
    float64 specialization of its own to compile, and float64 shares its rules' code with
    float32, which every case checks above."""
    return [(i, found[i]) for i in sorted({0, len(found) - 1})] if found else []


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_float64_matches_reference(name, backend):
    for convention in ("keras",) if name in MATRIX_ONLY else ("keras", "torch"):
        for case, hp in _ends(cases(name, convention)):
            shape = (37, 53) if name in MATRIX_ONLY else (4097,)  # see MATRIX_ONLY
            p, grads = problem(shape, STEPS, dtype=np.float64, seed=case)
            expected = run_reference(name, hp, convention, p, grads)
            got = run_fused(name, hp, convention, backend, p.copy(), grads)
            np.testing.assert_allclose(got, expected, **VS_REFERENCE[np.float64])
