"""fusedopt against the real libraries: Keras 3 for convention="keras", torch.optim for
convention="torch", 20 steps of random gradients, float32."""

import numpy as np
import peers
import pytest
from cases import SIGN_SENSITIVE, cases, problem
from test_backends_vs_reference import run_fused
from tolerances import VS_PEER_FLOAT32

import fusedopt
from fusedopt.algorithms.registry import REGISTRY

pytest.importorskip("torch")
pytest.importorskip("keras")

STEPS = 20
SHAPE = (3, 129)


def _matrix(convention, table):
    return [(n, i, hp) for n in sorted(REGISTRY) if n in table and n not in SIGN_SENSITIVE
            for i, hp in enumerate(cases(n, convention))]


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("name,case,hp", _matrix("keras", peers.KERAS))
def test_matches_keras(name, case, hp, backend):
    p0, grads = problem(SHAPE, STEPS, seed=100 + case)
    want = peers.run_keras(name, {**REGISTRY[name].defaults(), **hp}, p0, grads)
    got = run_fused(name, hp, "keras", backend, p0.copy(), grads)
    assert np.max(np.abs(got - want)) <= VS_PEER_FLOAT32


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("name,case,hp", _matrix("torch", peers.TORCH))
def test_matches_torch(name, case, hp, backend):
    p0, grads = problem(SHAPE, STEPS, seed=200 + case)
    want = peers.run_torch(name, {**REGISTRY[name].defaults(), **hp}, p0, grads)
    got = run_fused(name, hp, "torch", backend, p0.copy(), grads)
    assert np.max(np.abs(got - want)) <= VS_PEER_FLOAT32


def test_the_conventions_differ_where_expected():
    """The cases are sharp enough: Keras' and torch's Adam disagree by far more than the
    tolerance when epsilon matters, so a convention mix-up cannot pass."""
    p0, grads = problem(SHAPE, STEPS, seed=7)
    hp = dict(learning_rate=0.05, epsilon=1e-3)
    keras_like = run_fused("adam", hp, "keras", "cpu", p0.copy(), grads)
    torch_like = run_fused("adam", hp, "torch", "cpu", p0.copy(), grads)
    assert np.max(np.abs(keras_like - torch_like)) > 100 * VS_PEER_FLOAT32


def test_class_api_matches_torch_adamw():
    """The public class, not only the functional form, reproduces torch.optim.AdamW."""
    p0, grads = problem(SHAPE, STEPS, seed=11)
    hp = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8, weight_decay=0.01,
              amsgrad=False)
    want = peers.run_torch("adamw", hp, p0, grads)
    p = p0.copy()
    opt = fusedopt.AdamW(convention="torch", **hp)
    for g in grads:
        opt.apply_gradients([(g, p)])
    assert opt.iterations == STEPS
    assert np.max(np.abs(p - want)) <= VS_PEER_FLOAT32
