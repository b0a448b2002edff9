"""Adamax, Nadam and Lion: what the generic matrix (test_backends_vs_reference.py,
test_conformance.py) cannot say - Lion on sign-safe elements, sharpness of the cases,
Nadam's stateless momentum product, errors and config."""

import re

import numpy as np
import peers
import pytest
import reference
from cases import AWKWARD_SHAPES, cases, problem
from test_backends_vs_reference import run_fused
from tolerances import VS_PEER_FLOAT32, VS_REFERENCE

import fusedopt
from fusedopt.algorithms.registry import REGISTRY

STEPS = 10
PEER_STEPS = 20

# --- Lion: compare only where sign(c) cannot round the other way ---------------------------
#
# Lion moves every weight by exactly +-lr, the sign of c = b1 m + (1 - b1) g. Where |c| is
# within a few float32 ulps of zero, two correct float32 implementations (or float32 and
# float64) can disagree on the sign and end a whole 2 lr apart. Those elements are found
# from the float64 reference (|c| below MARGIN of its terms at any step) and left out; the
# rest, which is almost all of them, must agree to the usual tolerance. The momentum m has
# no sign in it and is compared everywhere.
MARGIN = 1e-4
#: The fraction of elements that may be left out before the test itself is suspect.
MAX_LEFT_OUT = 1e-3


def lion_reference(hp, convention, p, grads):
    """float64 params and m after every step, and the elements whose c came near zero."""
    hp = {**REGISTRY["lion"].defaults(), **hp}
    state, p = {}, p.astype(np.float64)
    fragile = np.zeros(p.shape, bool)
    for t, g in enumerate(grads, start=1):
        m = state.get("m", np.zeros(p.shape))
        a, b = hp["beta_1"] * m, (1 - hp["beta_1"]) * g.astype(np.float64)
        fragile |= np.abs(a + b) <= MARGIN * (np.abs(a) + np.abs(b))
        p = reference.step("lion", p, g, state, t, hp, convention)
    return p, state["m"], fragile


def lion_fused(hp, convention, backend, p, grads):
    m = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        fusedopt.functional.update("lion", [p], [g], [[m]], step=t, convention=convention,
                                   backend=backend, **hp)
    return p, m


LION = [(conv, i, hp) for conv in ("keras", "torch") for i, hp in enumerate(cases("lion", conv))]


@pytest.mark.parametrize("shape", AWKWARD_SHAPES, ids=str)
@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("convention,case,hp", LION, ids=[f"{c}-{i}" for c, i, _ in LION])
def test_lion_float32_matches_reference(convention, case, hp, backend, shape):
    p0, grads = problem(shape, STEPS, seed=case)
    want_p, want_m, fragile = lion_reference(hp, convention, p0, grads)
    got_p, got_m = lion_fused(hp, convention, backend, p0.copy(), grads)
    assert fragile.sum() <= MAX_LEFT_OUT * max(fragile.size, 1)
    np.testing.assert_allclose(got_p[~fragile], want_p[~fragile], **VS_REFERENCE[np.float32])
    np.testing.assert_allclose(got_m, want_m, **VS_REFERENCE[np.float32])


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("case,hp", list(enumerate(cases("lion", "keras"))))
def test_lion_matches_keras(case, hp, backend):
    p0, grads = problem((3, 129), PEER_STEPS, seed=300 + case)
    _, _, fragile = lion_reference(hp, "keras", p0, grads)
    want = peers.run_keras("lion", {**REGISTRY["lion"].defaults(), **hp}, p0, grads)
    got, _ = lion_fused(hp, "keras", backend, p0.copy(), grads)
    assert fragile.sum() <= 2
    assert np.max(np.abs(got - want)[~fragile]) <= VS_PEER_FLOAT32


def test_lion_torch_convention_is_keras_rule_with_multiplicative_decay():
    """No torch.optim.Lion: the torch convention runs Keras' rule; weight decay is
    theta *= 1 - lr wd, the same decay up to rounding."""
    p0, grads = problem((4097,), PEER_STEPS, seed=5)
    hp = dict(learning_rate=0.01, weight_decay=0.1)
    keras_p, _ = lion_fused(hp, "keras", "cpu", p0.copy(), grads)
    torch_p, _ = lion_fused(hp, "torch", "cpu", p0.copy(), grads)
    _, _, fragile = lion_reference(hp, "keras", p0, grads)
    assert np.max(np.abs(keras_p - torch_p)[~fragile]) <= VS_PEER_FLOAT32


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
def test_lion_sign_of_zero_is_zero(backend):
    """sign(0) = 0: a zero grad on a zero momentum leaves the weight where it is, and a NaN
    grad gives NaN, as ops.sign and torch.sign do."""
    p = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
    g = np.array([0.0, -0.0, 1.0, -1.0, np.nan], np.float32)
    fusedopt.Lion(learning_rate=0.5, backend=backend).apply_gradients([(g, p)])
    np.testing.assert_array_equal(p[:4], [1.0, 2.0, 2.5, 4.5])
    assert np.isnan(p[4])


# --- the cases are sharp enough to catch a convention or formula slip -----------------------

@pytest.mark.parametrize("name,hp", [
    ("adamax", dict(learning_rate=0.05, beta_2=0.9, epsilon=0.1)),
    ("nadam", dict(learning_rate=0.05, epsilon=1e-3)),
])
def test_the_conventions_differ_where_expected(name, hp):
    p0, grads = problem((3, 129), PEER_STEPS, seed=7)
    keras_like = run_fused(name, hp, "keras", "cpu", p0.copy(), grads)
    torch_like = run_fused(name, hp, "torch", "cpu", p0.copy(), grads)
    assert np.max(np.abs(keras_like - torch_like)) > 100 * VS_PEER_FLOAT32


def test_nadam_momentum_decay_matters():
    """torch's momentum_decay changes the result far beyond the tolerance, so a schedule
    slip cannot pass test_conformance."""
    p0, grads = problem((3, 129), PEER_STEPS, seed=8)
    base = dict(learning_rate=0.05, epsilon=1e-3)
    a = run_fused("nadam", base, "torch", "cpu", p0.copy(), grads)
    b = run_fused("nadam", dict(base, momentum_decay=0.05), "torch", "cpu", p0.copy(), grads)
    assert np.max(np.abs(a - b)) > 100 * VS_PEER_FLOAT32


def test_nadam_class_matches_torch_nadam_decoupled():
    hp = dict(learning_rate=0.02, beta_1=0.9, beta_2=0.999, epsilon=1e-3, weight_decay=0.2,
              momentum_decay=0.004, decoupled_weight_decay=True)
    p0, grads = problem((3, 129), PEER_STEPS, seed=9)
    want = peers.run_torch("nadam", hp, p0, grads)
    p = p0.copy()
    opt = fusedopt.Nadam(convention="torch", **hp)
    for g in grads:
        opt.apply_gradients([(g, p)])
    assert np.max(np.abs(p - want)) <= VS_PEER_FLOAT32


@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_nadam_restored_mid_run_continues_exactly(convention):
    """The momentum product comes from the step count, so a state dict is enough."""
    p0, grads = problem((257,), PEER_STEPS, seed=10)
    straight = p0.copy()
    opt = fusedopt.Nadam(learning_rate=0.05, convention=convention)
    for g in grads:
        opt.apply_gradients([(g, straight)])
    resumed = p0.copy()
    first = fusedopt.Nadam(learning_rate=0.05, convention=convention)
    for g in grads[:7]:
        first.apply_gradients([(g, resumed)])
    second = fusedopt.Nadam(learning_rate=0.05, convention=convention)
    second.load_state_dict(first.state_dict())
    for g in grads[7:]:
        second.apply_gradients([(g, resumed)])
    np.testing.assert_array_equal(resumed, straight)


# --- errors and config ------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kwargs,match", [
    (fusedopt.Lion, dict(beta_1=0.0), "beta_1 must be in \\(0, 1\\]"),
    (fusedopt.Lion, dict(beta_1=1.5), "beta_1"),
    (fusedopt.Lion, dict(beta_2=-0.1), "beta_2"),
    (fusedopt.Adamax, dict(beta_2=1.0), "beta_2 must be in \\[0, 1\\)"),
    (fusedopt.Adamax, dict(epsilon=-1.0), "epsilon must be a finite number >= 0"),
    (fusedopt.Adamax, dict(weight_decay=-0.1), "weight_decay"),
    (fusedopt.Nadam, dict(beta_1=1.0), "beta_1"),
    (fusedopt.Nadam, dict(momentum_decay=0.01), "momentum_decay exists only in the torch"),
    (fusedopt.Nadam, dict(decoupled_weight_decay=True), "exists only in the torch"),
    (fusedopt.Nadam, dict(momentum_decay=-1.0, convention="torch"), "momentum_decay must"),
    (fusedopt.Nadam, dict(decoupled_weight_decay=1, convention="torch"), "True or False"),
    (fusedopt.Nadam, dict(learning_rate=-0.1), "learning_rate"),
])
def test_bad_hyperparameters_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_lion_has_no_epsilon():
    with pytest.raises(TypeError, match="unexpected arguments \\['epsilon'\\]"):
        fusedopt.Lion(epsilon=1e-7)


@pytest.mark.parametrize("cls", ["Adamax", "Nadam", "Lion"])
def test_config_keys_and_defaults_equal_keras(cls):
    keras = pytest.importorskip("keras")
    want = getattr(keras.optimizers, cls)().get_config()
    got = getattr(fusedopt, cls)().get_config()
    assert set(got) == set(want)
    for key, value in want.items():
        if key == "learning_rate":  # Keras reports its float32 variable
            assert got[key] == pytest.approx(value)
        elif key == "name":  # Keras numbers the second and later instances: lion_1, ...
            assert re.fullmatch(rf"{got[key]}(_\d+)?", value)
        else:
            assert got[key] == value, key


def test_torch_config_round_trips():
    opt = fusedopt.Nadam(convention="torch", momentum_decay=0.01, decoupled_weight_decay=True,
                         weight_decay=0.1)
    cfg = opt.get_config()
    assert cfg["momentum_decay"] == 0.01 and cfg["decoupled_weight_decay"] is True
    again = fusedopt.Nadam.from_config(cfg)
    assert again.get_config() == cfg
    assert fusedopt.get({"class_name": "Nadam", "config": cfg}).flags == opt.flags


@pytest.mark.parametrize("name", ["adamax", "nadam", "lion"])
def test_get_by_name(name):
    assert fusedopt.get(name).get_config()["name"] == name
