"""fusedopt.keras in pure bfloat16 (the "bfloat16" dtype policy): ``stochastic_rounding``,
``kahan_summation`` and ``seed``. The door only translates: its bits are the core API's for
the same values, seed and positions; float32 variables beside them keep plain stores; the
options print in ``get_config()`` and a saved model continues bit for bit."""

import keras
import ml_dtypes
import numpy as np
import pytest
from keras_fit import build_model, data, fit, variables, weights

import fusedopt
import fusedopt.keras

BF16 = ml_dtypes.bfloat16
SHAPES = [(37, 5), (5,), (1,)]
STEPS = 8
MODES = {"stochastic": dict(stochastic_rounding=True, seed=11),
         "kahan": dict(kahan_summation=True)}
PAIRS = {"Adam": (dict(learning_rate=1e-2), fusedopt.Adam),
         "SGD": (dict(learning_rate=0.05, momentum=0.9), fusedopt.SGD)}


def _values(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) + 3).astype(BF16) for s in SHAPES]


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * 0.05).astype(BF16) for s in SHAPES]
            for _ in range(STEPS)]


def _bits(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x)).view(np.uint16).copy()


def _keras_run(cls_kwargs, options, values, grads):
    name, kwargs = cls_kwargs
    held = [keras.Variable(v.astype(np.float32), dtype="bfloat16", name=f"w{i}")
            for i, v in enumerate(values)]
    opt = getattr(fusedopt.keras, name)(**kwargs, **options)
    for step in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v) for g, v in zip(step, held)])
    return held, opt


def _core_run(core, kwargs, options, values, grads):
    params = [v.copy() for v in values]
    opt = core(**kwargs, **options, state_dtype="bfloat16", backend="cpu")
    for step in grads:
        opt.apply_gradients([(g.copy(), p) for g, p in zip(step, params)])
    return params, opt


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PAIRS)
def test_bits_are_the_core_apis(name, mode):
    """bfloat16 variables and their bfloat16 moments: every bit as the core API's with
    bfloat16 state and the same seed, and unlike round-to-nearest's (the option acts)."""
    kwargs, core = PAIRS[name]
    values, grads = _values(), _grads()
    held, opt = _keras_run((name, kwargs), MODES[mode], values, grads)
    params, core_opt = _core_run(core, kwargs, MODES[mode], values, grads)
    for v, p in zip(held, params):
        assert v.dtype == "bfloat16"
        np.testing.assert_array_equal(_bits(v), p.view(np.uint16))
    ours = [_bits(s) for s in opt._momentums] if name == "Adam" else \
        [_bits(s) for s in opt.momentums]
    theirs = [core_opt.state(p)["m" if name == "Adam" else "momentum"].view(np.uint16)
              for p in params]
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    if mode == "kahan":
        assert [c.dtype for c in opt._compensations] == ["bfloat16"] * len(SHAPES)
        for c, p in zip(opt._compensations, params):
            np.testing.assert_array_equal(_bits(c), core_opt.state(p)["compensation"]
                                          .view(np.uint16))
        assert any(_bits(c).any() for c in opt._compensations)
    nearest, _ = _keras_run((name, kwargs), {}, values, grads)
    assert any((_bits(a) != _bits(b)).any() for a, b in zip(held, nearest))


def test_seed_keys_stochastic_rounding_only():
    values, grads = _values(), _grads()
    run = lambda options: [_bits(v) for v in _keras_run(  # noqa: E731
        ("Adam", dict(learning_rate=1e-2)), options, values, grads)[0]]
    same = run(dict(stochastic_rounding=True, seed=11))
    assert all((a == b).all() for a, b in zip(same, run(dict(stochastic_rounding=True,
                                                             seed=11))))
    assert any((a != b).any() for a, b in zip(same, run(dict(stochastic_rounding=True,
                                                             seed=12))))
    kahan = run(dict(kahan_summation=True))
    assert all((a == b).all() for a, b in zip(kahan, run(dict(kahan_summation=True))))


def test_float32_variables_beside_them_keep_plain_stores():
    """A model mixing float32 and bfloat16 variables: the float32 ones step exactly as
    without the option, the bfloat16 ones stochastically."""
    rng = np.random.default_rng(5)
    w32 = rng.standard_normal(16).astype(np.float32)
    w16 = (rng.standard_normal(16) + 3).astype(BF16)
    grads = [(rng.standard_normal(16).astype(np.float32) * 0.05,
              (rng.standard_normal(16) * 0.05).astype(BF16)) for _ in range(STEPS)]

    def run(**options):
        a = keras.Variable(w32, name="a")
        b = keras.Variable(w16.astype(np.float32), dtype="bfloat16", name="b")
        opt = fusedopt.keras.Adam(learning_rate=1e-2, **options)
        for g32, g16 in grads:
            opt.apply_gradients([(keras.ops.convert_to_tensor(g32), a),
                                 (keras.ops.convert_to_tensor(g16), b)])
        return _bits(a), _bits(b), opt

    plain_a, plain_b, _ = run()
    a, b, opt = run(stochastic_rounding=True, seed=3)
    np.testing.assert_array_equal(a, plain_a)
    assert (b != plain_b).any()
    modes = sorted(opt._fused.engine.hypers[g].mode for g in opt._fused.engine.group_of)
    assert modes == ["plain", "stochastic"]


@pytest.mark.parametrize("mode", MODES)
def test_config_and_save_load_continue_bit_for_bit(tmp_path, mode):
    """The options are in get_config() (the defaults print as Keras'), and a model saved at
    epoch 3 of 5 and loaded continues as the uninterrupted fit, weights and every optimizer
    variable (the compensations included) bit for bit."""
    options = MODES[mode]
    make = lambda: fusedopt.keras.Adam(learning_rate=0.01, **options)  # noqa: E731
    config = make().get_config()
    assert {k: config[k] for k in options} == options
    assert type(make()).from_config(config).get_config() == config
    assert not {"stochastic_rounding", "kahan_summation", "seed"} & set(
        fusedopt.keras.Adam().get_config())
    train = data()
    uninterrupted = fit(make(), epochs=5, train=train, policy="bfloat16")
    assert {v.dtype for v in uninterrupted.trainable_variables} == {"bfloat16"}
    first = fit(make(), epochs=3, train=train, policy="bfloat16")
    first.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.get_config() == first.optimizer.get_config()
    loaded.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    assert int(loaded.optimizer.iterations) == 25
    for a, b in zip(weights(loaded), weights(uninterrupted)):
        np.testing.assert_array_equal(a, b)
    ours, theirs = variables(loaded.optimizer), variables(uninterrupted.optimizer)
    assert len(ours) == len(theirs)  # in order (their paths differ by instance and layer)
    if mode == "kahan":
        assert sum(path.endswith("_compensation") for path in ours) == len(weights(loaded))
    for (key, a), b in zip(ours.items(), theirs.values()):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="choose one"):
        fusedopt.keras.Adam(stochastic_rounding=True, kahan_summation=True)
    with pytest.raises(TypeError, match="stochastic_rounding must be True or False"):
        fusedopt.keras.Adam(stochastic_rounding="yes")
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32\)"):
        fusedopt.keras.Adam(stochastic_rounding=True, seed=-1)
    keras.backend.clear_session()
    net = build_model(0)  # float32 variables: nothing to round
    before = weights(net)
    opt = fusedopt.keras.Adam(kahan_summation=True)
    with pytest.raises(ValueError, match=r"kahan_summation=True rounds the stores of "
                                         r"bfloat16 variables, and this model has none.*"
                                         r"'bfloat16' dtype policy"):
        opt.build(net.trainable_variables)
    assert not opt.built
    for a, b in zip(weights(net), before):
        np.testing.assert_array_equal(a, b)
