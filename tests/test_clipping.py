"""Gradient clipping (clipnorm, global_clipnorm, clipvalue) on every backend: against real
Keras 3, and cpu / unfused against the float64 reference on awkward sizes."""

import numpy as np
import pytest
import reference
from cases import AWKWARD_SHAPES
from tolerances import VS_PEER_FLOAT32, VS_REFERENCE

import fusedopt
from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY

STEPS = 20
CLIPS = [dict(clipnorm=1.0), dict(global_clipnorm=2.0), dict(clipvalue=0.5)]
CLIP_IDS = ["clipnorm", "global_clipnorm", "clipvalue"]
#: Lion is left out of the elementwise comparisons: see tests/cases.py SIGN_SENSITIVE.
OPTIMIZERS = {
    "adam": ("Adam", dict(learning_rate=0.01)),
    "adamw": ("AdamW", dict(learning_rate=0.01, weight_decay=0.1)),
    "adamax": ("Adamax", dict(learning_rate=0.02)),
    "nadam": ("Nadam", dict(learning_rate=0.01, epsilon=1e-3)),
    "sgd": ("SGD", dict(learning_rate=0.01, momentum=0.9)),
    "rmsprop": ("RMSprop", dict(learning_rate=0.01, epsilon=1e-3)),
}
SHAPES = [(3, 129), (5,), (1,)]


def problem(shapes, steps, seed, scale=5.0, dtype=np.float32):
    """Params and grads large enough that every kind of clipping changes them."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(s) * scale).astype(dtype) for s in shapes]
             for _ in range(steps)]
    return params, grads


def run_keras(cls, hp, params, grads):
    import keras

    opt = getattr(keras.optimizers, cls)(**hp)
    variables = [keras.Variable(p.copy(), dtype="float32") for p in params]
    for gs in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v) for g, v in zip(gs, variables)])
    return [keras.ops.convert_to_numpy(v) for v in variables]


def run_class(cls, hp, params, grads, backend):
    params = [p.copy() for p in params]
    opt = getattr(fusedopt, cls)(backend=backend, **hp)
    for gs in grads:
        opt.apply_gradients(list(zip(gs, params)))
    return params


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b))


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_matches_keras(name, clip, backend):
    pytest.importorskip("keras")
    cls, hp = OPTIMIZERS[name]
    params, grads = problem(SHAPES, STEPS, seed=sorted(OPTIMIZERS).index(name))
    want = run_keras(cls, {**hp, **clip}, params, grads)
    got = run_class(cls, {**hp, **clip}, params, grads, backend)
    assert max_diff(got, want) <= VS_PEER_FLOAT32
    # The clipping mattered: without it the result is far from Keras'.
    unclipped = run_class(cls, hp, params, grads, backend)
    assert max_diff(unclipped, want) > 100 * VS_PEER_FLOAT32


def run_reference(name, hp, convention, params, grads, clip):
    hp = {**REGISTRY[name].defaults(), **hp}
    states = [{} for _ in params]
    params = [p.astype(np.float64) for p in params]
    for t, gs in enumerate(grads, start=1):
        gs = reference.clip(gs, **clip)
        params = [reference.step(name, p, g, s, t, hp, convention)
                  for p, g, s in zip(params, gs, states)]
    return params


def run_functional(name, hp, convention, params, grads, clip, backend):
    spec = REGISTRY[name]
    flags = spec.flags({**spec.defaults(), **hp}, convention)
    params = [p.copy() for p in params]
    states = [[np.zeros_like(p) for _ in spec.slots(flags)] for p in params]
    for t, gs in enumerate(grads, start=1):
        fusedopt.functional.update(name, params, gs, states, step=t, convention=convention,
                                   backend=backend, **clip, **hp)
    return params


REFERENCE_CASES = [("adam", "keras", dict(learning_rate=0.01)),
                   ("adamax", "torch", dict(learning_rate=0.02, weight_decay=0.1)),
                   ("nadam", "torch", dict(learning_rate=0.01, epsilon=1e-3))]


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("name,convention,hp", REFERENCE_CASES,
                         ids=[f"{n}-{c}" for n, c, _ in REFERENCE_CASES])
def test_awkward_sizes_match_reference(name, convention, hp, clip, backend, monkeypatch):
    """Every awkward size in one call, with chunks small enough that a tensor's norm is
    summed over many work items."""
    monkeypatch.setattr(config, "CPU_CHUNK", 1024)
    params, grads = problem(AWKWARD_SHAPES, 10, seed=3, scale=3.0)
    want = run_reference(name, hp, convention, params, grads, clip)
    got = run_functional(name, hp, convention, params, grads, clip, backend)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **VS_REFERENCE[np.float32])


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
def test_global_norm_spans_dtypes(backend):
    """float32 and float64 params are two groups (two launches); the global norm still
    covers both."""
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(300).astype(np.float32), rng.standard_normal(7)]
    grads = [[rng.standard_normal(300).astype(np.float32) * 4, rng.standard_normal(7) * 40]
             for _ in range(5)]
    clip = dict(global_clipnorm=1.5)
    want = run_reference("adam", {}, "keras", params, grads, clip)
    got = run_functional("adam", {}, "keras", params, grads, clip, backend)
    np.testing.assert_allclose(got[0], want[0], **VS_REFERENCE[np.float32])
    # The float64 param's scale comes from a norm that float32 squares entered (rounded in
    # float32 by the unfused backend, as Keras does): float32 accuracy, not float64's.
    np.testing.assert_allclose(got[1], want[1], **VS_REFERENCE[np.float32])


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
def test_grads_are_not_modified(clip, backend):
    params, grads = problem(SHAPES, 1, seed=5)
    before = [g.copy() for g in grads[0]]
    run_class("Adam", clip, params, grads, backend)
    for g, b in zip(grads[0], before):
        np.testing.assert_array_equal(g, b)


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("clip", CLIPS[:2], ids=CLIP_IDS[:2])
def test_nan_grad_spreads_as_in_keras(clip, backend):
    """A NaN grad: clipnorm makes its own tensor NaN, global_clipnorm every tensor."""
    pytest.importorskip("keras")
    params, grads = problem(SHAPES, 1, seed=6)
    grads[0][1][2] = np.nan
    hp = dict(learning_rate=0.1, **clip)
    want = run_keras("Adam", hp, params, grads)
    got = run_class("Adam", hp, params, grads, backend)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))


@pytest.mark.parametrize("kwargs,match", [
    (dict(clipnorm=1.0, clipvalue=1.0), "only one of clipnorm, global_clipnorm, clipvalue"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), "only one of"),
    (dict(clipnorm=0.0), "clipnorm must be a positive finite number"),
    (dict(global_clipnorm=-1.0), "global_clipnorm must be a positive"),
    (dict(clipvalue=float("inf")), "clipvalue must be a positive finite"),
    (dict(clipvalue=True), "clipvalue must be"),
    (dict(clipvalue="1"), "clipvalue must be"),
])
def test_bad_clipping_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.Adam(**kwargs)
    p, g = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=match):
        fusedopt.functional.update("adam", [p], [g], [[np.zeros(3, np.float32)] * 2], step=1,
                                   **kwargs)


@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
def test_config_round_trips(clip):
    cfg = fusedopt.Lion(**clip).get_config()
    for key in ("clipnorm", "global_clipnorm", "clipvalue"):
        assert cfg[key] == clip.get(key)
    assert fusedopt.Lion.from_config(cfg).get_config() == cfg
