"""SGD, RMSprop, Adagrad and Adadelta beyond the registry-driven matrix.

Their cases in tests/cases.py already run through test_backends_vs_reference.py (every
backend vs the float64 reference, each awkward size) and test_conformance.py (fusedopt vs
Keras 3 and torch.optim). Here: the cases reach every compiled variant; the class API over
all awkward sizes in one call; the reference itself against the real libraries; the two
conventions told apart; bad hyperparameters; Keras' signatures, slot names and examples.
"""

import doctest
import importlib
import inspect
import re

import numpy as np
import peers
import pytest
import reference
from cases import AWKWARD_SHAPES, cases, problem
from test_backends_vs_reference import run_fused
from tolerances import VS_PEER_FLOAT32, VS_REFERENCE

import fusedopt
from fusedopt import config
from fusedopt.algorithms.registry import CONVENTIONS, REGISTRY

NAMES = ("sgd", "rmsprop", "adagrad", "adadelta")
CLASSES = {cls.spec_name: cls for cls in fusedopt.Optimizer.__subclasses__()}
MATRIX = [(n, conv, i, hp) for n in NAMES for conv in CONVENTIONS
          for i, hp in enumerate(cases(n, conv))]
IDS = [f"{n}-{c}-{i}" for n, c, i, _ in MATRIX]


def _full(name, hp):
    return {**REGISTRY[name].defaults(), **hp}


# --- the matrix is complete -------------------------------------------------------------------

@pytest.mark.parametrize("kernel", sorted({s.kernel for s in REGISTRY.values()}))
def test_cases_reach_every_compiled_variant(kernel):
    """Each template instantiation the runtime can launch is run by some test case."""
    specs = [s for s in REGISTRY.values() if s.kernel == kernel]
    compiled = {f for s in specs for f in s.all_flags}
    reached = {s.flags(_full(s.name, hp), conv) for s in specs for conv in CONVENTIONS
               for hp in cases(s.name, conv)}
    assert reached == compiled, f"no case runs {sorted(compiled - reached)}"


# --- the class API, every awkward size in one call --------------------------------------------

def _misaligned(n, rng):
    """A C-contiguous view one element past a 16-byte boundary."""
    base = rng.standard_normal(n + 1).astype(np.float32) * 3
    return base[1:]


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("name,convention,case,hp", MATRIX, ids=IDS)
def test_class_api_all_sizes_in_one_call(name, convention, case, hp, backend, monkeypatch):
    """One apply_gradients call per step over every awkward size (the large one left to the
    per-shape matrix) plus a misaligned view; small CPU chunks give multi-chunk tensors."""
    monkeypatch.setattr(config, "CPU_CHUNK", 1024)
    rng = np.random.default_rng(case)
    params = [problem(s, 0, seed=case)[0] for s in AWKWARD_SHAPES if np.prod(s) < 10**5]
    params.append(_misaligned(2051, rng))
    grads = [[(rng.standard_normal(p.shape) * rng.choice([0.01, 1.0, 10.0])).astype(np.float32)
              for p in params] for _ in range(10)]
    states = [{} for _ in params]
    want = [p.astype(np.float64) for p in params]
    opt = CLASSES[name](convention=convention, backend=backend, **hp)
    for t, step_grads in enumerate(grads, start=1):
        opt.apply_gradients(zip(step_grads, params))
        want = [reference.step(name, w, g, s, t, _full(name, hp), convention)
                for w, g, s in zip(want, step_grads, states)]
    for got, expected in zip(params, want):
        np.testing.assert_allclose(got, expected, **VS_REFERENCE[np.float32])
    assert opt.iterations == 10


# --- the reference and the classes against the real libraries ---------------------------------

PEER_STEPS, PEER_SHAPE = 20, (3, 129)


def _peer(name, convention, hp, p0, grads):
    run = peers.run_keras if convention == "keras" else peers.run_torch
    return run(name, _full(name, hp), p0, grads)


@pytest.mark.parametrize("name,convention,case,hp", MATRIX, ids=IDS)
def test_reference_matches_peers(name, convention, case, hp):
    """The oracle agrees with Keras 3 / torch.optim run in float32."""
    p0, grads = problem(PEER_SHAPE, PEER_STEPS, seed=300 + case)
    want = _peer(name, convention, hp, p0, grads)
    state, p = {}, p0.astype(np.float64)
    for t, g in enumerate(grads, start=1):
        p = reference.step(name, p, g, state, t, _full(name, hp), convention)
    assert np.max(np.abs(p - want)) <= VS_PEER_FLOAT32


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("name", NAMES)
def test_class_matches_peers(name, convention):
    """The public class (its iterations drive torch SGD's first step) on its last case."""
    hp = cases(name, convention)[-1]
    p0, grads = problem(PEER_SHAPE, PEER_STEPS, seed=400)
    want = _peer(name, convention, hp, p0, grads)
    p = p0.copy()
    opt = CLASSES[name](convention=convention, **hp)
    for g in grads:
        opt.apply_gradients([(g, p)])
    assert np.max(np.abs(p - want)) <= VS_PEER_FLOAT32


def _differ(name, hp):
    """eps inside vs outside the root, or decoupled vs L2 weight decay; else the same math.
    Plain SGD is the exception: theta - lr wd theta - lr g either way."""
    if name in ("rmsprop", "adagrad"):
        return True
    return bool(hp.get("weight_decay")) and not (name == "sgd" and not hp.get("momentum"))


@pytest.mark.parametrize("name,case,hp", [(n, i, hp) for n, c, i, hp in MATRIX if c == "keras"])
def test_conventions_differ_exactly_where_the_math_does(name, case, hp):
    """The cases are sharp enough that a convention mix-up fails the peer tolerance."""
    p0, grads = problem(PEER_SHAPE, PEER_STEPS, seed=500 + case)
    keras_like = run_fused(name, hp, "keras", "cpu", p0.copy(), grads)
    torch_like = run_fused(name, hp, "torch", "cpu", p0.copy(), grads)
    gap = np.max(np.abs(keras_like - torch_like))
    if _differ(name, hp):
        assert gap > 100 * VS_PEER_FLOAT32
    else:  # the same math, rounded in another order: float32 rounding at the params' scale
        assert gap <= VS_PEER_FLOAT32 * max(1.0, float(np.abs(torch_like).max()))


def test_torch_sgd_first_step_is_the_gradient():
    """torch's buffer starts as g, not (1 - dampening) g: after one step theta = p - lr g."""
    p = np.array([1.0, -2.0, 3.0], np.float32)
    g = np.array([0.5, 0.25, -1.0], np.float32)
    opt = fusedopt.SGD(learning_rate=0.1, momentum=0.9, dampening=0.5, convention="torch")
    opt.apply_gradients([(g, p)])
    np.testing.assert_array_equal(opt.state(p)["momentum"], g)
    opt.apply_gradients([(g, p)])
    np.testing.assert_allclose(opt.state(p)["momentum"], 0.9 * g + 0.5 * g, rtol=1e-7)


def test_keras_nesterov_without_momentum_is_plain_sgd():
    """Keras accepts nesterov=True with momentum 0 and then keeps no state."""
    p, (g,) = problem((7,), 1)
    want = p - np.float32(0.01) * g
    opt = fusedopt.SGD(nesterov=True)
    opt.apply_gradients([(g, p)])
    assert opt.slot_names == ()
    np.testing.assert_array_equal(p, want)


# --- hyperparameters --------------------------------------------------------------------------

NESTEROV = (r"nesterov=True in the torch convention needs momentum > 0 and dampening == 0 "
            r"\(as torch.optim.SGD\)")
BAD = [
    ("SGD", dict(momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    ("SGD", dict(momentum=-0.1), r"momentum must be in \[0, 1\), got -0.1"),
    ("SGD", dict(learning_rate=-0.01), r"learning_rate must be a finite number >= 0"),
    ("SGD", dict(nesterov=1), r"nesterov must be True or False, got 1"),
    ("SGD", dict(nesterov=True, convention="torch"), NESTEROV + r", got momentum=0.0"),
    ("SGD", dict(nesterov=True, momentum=0.9, dampening=0.1, convention="torch"),
     NESTEROV + r", got momentum=0.9, dampening=0.1"),
    ("SGD", dict(dampening=0.5), r"dampening exists only in the torch convention"),
    ("SGD", dict(dampening=1.5, convention="torch"), r"dampening must be in \[0, 1\]"),
    ("RMSprop", dict(rho=-0.1), r"rho must be in \[0, 1\), got -0.1"),
    ("RMSprop", dict(rho=1.0), r"rho must be in \[0, 1\), got 1.0"),
    ("RMSprop", dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    ("RMSprop", dict(epsilon=-1e-7), r"epsilon must be a finite number >= 0"),
    ("RMSprop", dict(centered="no"), r"centered must be True or False"),
    ("RMSprop", dict(alpha=0.99), r"unexpected arguments \['alpha'\]"),
    ("Adagrad", dict(initial_accumulator_value=-0.1),
     r"initial_accumulator_value must be a finite number >= 0, got -0.1"),
    ("Adagrad", dict(epsilon=float("nan")), r"epsilon must be a finite number >= 0"),
    ("Adagrad", dict(lr_decay=0.1), r"lr_decay exists only in the torch convention"),
    ("Adagrad", dict(lr_decay=-0.1, convention="torch"), r"lr_decay must be a finite number"),
    ("Adadelta", dict(rho=1.5), r"rho must be in \[0, 1\), got 1.5"),
    ("Adadelta", dict(epsilon=-1.0), r"epsilon must be a finite number >= 0"),
    ("Adadelta", dict(weight_decay=-0.1), r"weight_decay must be a finite number >= 0"),
]


@pytest.mark.parametrize("cls,kwargs,match", BAD, ids=[f"{c}-{sorted(k)}" for c, k, _ in BAD])
def test_bad_hyperparameters_raise_at_construction(cls, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(fusedopt, cls)(**kwargs)


def test_functional_form_checks_combinations_and_conventions_too():
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=NESTEROV):
        fusedopt.functional.update("sgd", [p], [p.copy()], [[np.zeros_like(p)]], step=1,
                                   convention="torch", momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="dampening exists only in the torch convention"):
        fusedopt.functional.update("sgd", [p], [p.copy()], [[np.zeros_like(p)]], step=1,
                                   momentum=0.5, dampening=0.5)


def test_valid_edge_values_construct():
    fusedopt.SGD(nesterov=True, momentum=0.9, convention="torch")
    fusedopt.SGD(momentum=0.9, dampening=1.0, convention="torch")
    fusedopt.RMSprop(rho=0.0, epsilon=0.0)
    fusedopt.Adagrad(initial_accumulator_value=0.0, lr_decay=0.5, convention="torch")


# --- Keras' surface ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_signature_follows_keras(name):
    """Keras' own arguments come first, in Keras' order and with its defaults (Keras' name
    default None resolves to the name fusedopt uses as its default)."""
    keras = pytest.importorskip("keras")
    ours = list(inspect.signature(CLASSES[name]).parameters.values())
    theirs = list(inspect.signature(getattr(keras.optimizers, CLASSES[name].__name__))
                  .parameters.values())
    lead = [p.name for p in theirs].index("global_clipnorm") + 1
    assert [(p.name, p.default) for p in ours[:lead]] == [(p.name, p.default)
                                                         for p in theirs[:lead]]
    # Keras numbers the names of later instances (sgd_1, ...); the first one is the default.
    keras_name = getattr(keras.optimizers, CLASSES[name].__name__)().get_config()["name"]
    assert re.fullmatch(inspect.signature(CLASSES[name]).parameters["name"].default
                        + r"(_\d+)?", keras_name)


@pytest.mark.parametrize("name", NAMES)
def test_torch_config_carries_torch_only_hyperparameters(name):
    cls = CLASSES[name]
    torch_only = {h.name for h in REGISTRY[name].hypers if "keras" not in h.conventions}
    keras_cfg = cls().get_config()
    torch_cfg = cls(convention="torch").get_config()
    assert not torch_only & set(keras_cfg)
    assert set(torch_cfg) == set(keras_cfg) | torch_only | {"convention"}


@pytest.mark.parametrize("name,case,hp", [(n, i, hp) for n, c, i, hp in MATRIX if c == "keras"])
def test_slots_are_keras_variables_in_order(name, case, hp):
    keras = pytest.importorskip("keras")
    kopt = getattr(keras.optimizers, CLASSES[name].__name__)(**hp)
    kopt.build([keras.Variable(np.zeros(3, np.float32), name="w")])
    theirs = [v.name[len("w_"):] for v in kopt.variables if v.name.startswith("w_")]
    assert list(CLASSES[name](**hp).slot_names) == theirs


def test_adagrad_state_starts_at_initial_accumulator_value():
    p = np.zeros(5, np.float32)
    opt = fusedopt.Adagrad(initial_accumulator_value=0.25)
    opt.build([p])
    np.testing.assert_array_equal(opt.state(p)["accumulator"], np.full(5, 0.25, np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_docstring_examples(name):
    module = importlib.import_module(f"fusedopt.algorithms.{name}")
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
