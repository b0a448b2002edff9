"""``maximize``: a group that ascends its objective steps exactly as one that minimizes with
the negated grads, bit for bit, on every backend (the -1 is folded into the grad scale)."""

import numpy as np
import pytest
from variants import matrix, matrix_ids

from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.clip import Clipping
from fusedopt.engine.engine import Engine

STEPS = 3


def _params(seed=0, shapes=((5,), (4097,), (3, 7))):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 3).astype(np.float32) for s in shapes]


def _grads(params, step):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(p.shape).astype(np.float32) for p in params]


def _pair(name, hp, convention, backend, **kwargs):
    up, down = (Engine(REGISTRY[name], convention, backend=backend, **kwargs) for _ in "ab")
    up.add_group(dict(hp, maximize=True))
    down.add_group(hp)
    a, b = _params(), _params()
    up.add_params(a)
    down.add_params(b)
    return up, down, a, b


def _same_bits(xs, ys):
    return all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(xs, ys))


@pytest.mark.parametrize("name, hp, convention", matrix(), ids=matrix_ids())
def test_maximize_is_minimizing_the_negated_grads(name, hp, convention):
    up, down, a, b = _pair(name, hp, convention, "cpu")
    for t in range(STEPS):
        grads = _grads(a, t)
        up.step(grads)
        down.step([-g for g in grads])
    assert _same_bits(a, b)
    assert all(_same_bits(x, y) for x, y in zip(up.states, down.states))
    assert not _same_bits(a, _params())


@pytest.mark.parametrize("backend", ["cpu", "unfused", "cuda"])
@pytest.mark.parametrize("extra", [dict(), dict(grad_scale=8.0), dict(clip=Clipping(clipnorm=0.5)),
                                   dict(clip=Clipping(clipvalue=0.1))],
                         ids=["plain", "grad_scale", "clipnorm", "clipvalue"])
def test_maximize_folds_into_loss_scaling_and_clipping(request, backend, extra):
    """With a loss scale or a clip the grad scale is already written: the sign joins it."""
    if backend == "cuda":
        request.getfixturevalue("host_cuda")
    extra = dict(extra)
    clip = extra.pop("clip", None)
    kwargs = dict(clipping=clip) if clip is not None else {}
    up, down, a, b = _pair("adam", dict(learning_rate=0.1), "torch", backend, **kwargs)
    scale = extra.get("grad_scale", 1.0)
    for t in range(STEPS):
        grads = [g * np.float32(scale) for g in _grads(a, t)]
        up.step(grads, **extra)
        down.step([-g for g in grads], **extra)
    assert _same_bits(a, b)
    assert not _same_bits(a, _params())


def test_maximize_must_be_a_bool_and_changes_nothing_when_refused():
    engine = Engine(REGISTRY["sgd"], "torch", backend="cpu")
    with pytest.raises(ValueError, match=r"group 0: maximize must be True or False, got 1"):
        engine.add_group(dict(maximize=1))
    assert engine.hypers == []
