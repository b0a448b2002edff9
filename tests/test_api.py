"""The Keras-style surface: config, get, state save/restore, schedules, functional form."""

import pickle

import numpy as np
import pytest
from cases import problem

import fusedopt
from fusedopt.algorithms.registry import REGISTRY

CLASSES = {cls.spec_name: cls for cls in fusedopt.Optimizer.__subclasses__()}
try:
    import keras as _keras
except ImportError:  # the tests below skip
    _keras = None
#: The classes whose Keras peer exists (keras.optimizers.<Name>; fusedopt.keras also has
#: Keras-style classes Keras lacks, such as StableAdamW).
WITH_KERAS_PEER = sorted(
    n for n in CLASSES if fusedopt.REGISTRY[n].keras is not None
    and (_keras is None or hasattr(_keras.optimizers, fusedopt.REGISTRY[n].keras["name"])))


@pytest.mark.parametrize("name", WITH_KERAS_PEER)
def test_config_keys_equal_keras(name):
    keras = pytest.importorskip("keras")
    cls = CLASSES[name]
    ours = cls().get_config()
    theirs = getattr(keras.optimizers, cls.__name__)().get_config()
    assert set(ours) == set(theirs)
    # Keras numbers the names of later instances ("adam_3"); the stem must match.
    assert theirs["name"] in (ours["name"], *(f"{ours['name']}_{i}" for i in range(1, 1000)))
    for key, value in theirs.items():
        if key == "name":
            continue
        if isinstance(value, float):
            assert ours[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert ours[key] == value, key


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_from_config_round_trip(name):
    cls = CLASSES[name]
    opt = cls(learning_rate=0.123, convention="torch", backend="unfused")
    again = cls.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert again.convention == "torch" and again.backend == "unfused"


def test_get():
    assert isinstance(fusedopt.get("adam"), fusedopt.Adam)
    assert isinstance(fusedopt.get("AdamW"), fusedopt.AdamW)
    opt = fusedopt.get({"class_name": "Adam", "config": {"learning_rate": 0.5, "amsgrad": True}})
    assert opt.hyper["learning_rate"] == 0.5 and opt.hyper["amsgrad"] is True
    flat = fusedopt.get({"class_name": "Adam", **fusedopt.Adam(beta_1=0.5).get_config()})
    assert flat.hyper["beta_1"] == 0.5
    same = fusedopt.Adam()
    assert fusedopt.get(same) is same
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        fusedopt.get("adamx")


def _train(opt, params, grads_per_step):
    for grads in grads_per_step:
        opt.apply_gradients(zip(grads, params))


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    """Save after 5 steps, load into a new optimizer (through a pickle file, as another
    process would), train 5 more: bit-identical to 10 uninterrupted steps."""
    shapes = [(7,), (3, 5), (1,)]
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    steps = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(10)]

    straight = [p.copy() for p in init]
    _train(fusedopt.Adam(learning_rate=0.1, amsgrad=True), straight, steps)

    resumed = [p.copy() for p in init]
    first = fusedopt.Adam(learning_rate=0.1, amsgrad=True)
    _train(first, resumed, steps[:5])
    path = tmp_path / "opt.pkl"
    path.write_bytes(pickle.dumps(first.state_dict()))
    second = fusedopt.Adam(learning_rate=0.1, amsgrad=True)
    second.load_state_dict(pickle.loads(path.read_bytes()))
    _train(second, resumed, steps[5:])

    assert second.iterations == 10
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)
    saved = first.state_dict()
    assert sorted(saved["state"]) == [0, 1, 2]
    assert sorted(saved["state"][1]) == ["m", "v", "vhat"]


def test_load_state_dict_refuses_mismatch():
    p = np.zeros(4, np.float32)
    opt = fusedopt.Adam()
    opt.apply_gradients([(np.ones(4, np.float32), p)])
    bad = opt.state_dict()
    bad["state"][0]["m"] = np.zeros(5, np.float32)
    before = [s.copy() for s in opt.variables]
    with pytest.raises(ValueError, match=r"param 0: saved 'm' has shape \(5,\)"):
        opt.load_state_dict(bad)
    for s, b in zip(opt.variables, before):
        np.testing.assert_array_equal(s, b)
    ams = opt.state_dict()
    with pytest.raises(ValueError, match="saved slots"):
        _ams_build(ams)


def _ams_build(state):
    opt = fusedopt.Adam(amsgrad=True)
    opt.load_state_dict(state)
    opt.build([np.zeros(4, np.float32)])


def test_learning_rate_schedule():
    """A callable learning rate is evaluated at the iteration count before the step."""
    p, grads = problem((33,), 4, seed=5)
    a, b = p.copy(), p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    opt = fusedopt.Adam(learning_rate=lambda iterations: 0.1 / (1 + iterations))
    for t, g in enumerate(grads, start=1):
        opt.apply_gradients([(g, a)])
        fusedopt.functional.adam_step(b, g, m, v, step=t, learning_rate=0.1 / t)
    np.testing.assert_array_equal(a, b)


def test_functional_equals_class():
    p, grads = problem((129,), 5, seed=9)
    a, b = p.copy(), p.copy()
    m, v, vhat = (np.zeros_like(p) for _ in range(3))
    opt = fusedopt.Adam(learning_rate=0.02, amsgrad=True, weight_decay=0.01)
    for t, g in enumerate(grads, start=1):
        opt.apply_gradients([(g, a)])
        fusedopt.functional.adam_step(b, g, m, v, vhat, step=t, learning_rate=0.02,
                                      weight_decay=0.01)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(opt.state(a)["vhat"], vhat)


def test_registry_drives_public_classes():
    assert set(CLASSES) == {name for name, spec in REGISTRY.items() if spec.public}
    for name in CLASSES:
        assert hasattr(fusedopt, CLASSES[name].__name__)


def test_a_pass_others_run_has_no_class():
    # schedule-free's train/eval switch runs through eval() and train(), not as an optimizer
    assert not REGISTRY["schedulefreeswitch"].public
    assert not hasattr(fusedopt, "ScheduleFreeSwitch")
    assert "ScheduleFreeSwitch" not in fusedopt.__all__
    with pytest.raises(ValueError, match="unknown optimizer 'schedulefreeswitch'"):
        fusedopt.get("schedulefreeswitch")
