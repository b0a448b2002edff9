"""The storage options' front door: errors, config, checkpoints.

- Bad combinations are refused with the param (or argument) named and the fix, before
  anything changes: stochastic rounding or Kahan summation on float32/float64 params with
  float32/float64 state, either one with master weights, both at once, a bad seed.
- ``seed``, ``stochastic_rounding`` and ``kahan_summation`` are in get_config and come back
  through from_config; the state_dict carries the seed and the compensation slot.
- Stopped at step k, saved (``opt.save``: the safetensors checkpoint), loaded in a new
  process (``fusedopt.load``) and continued: the bits of the run that never stopped
  (stochastic rounding: the step and the seed key the stream).
"""

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fusedopt import SGD, Adam, Lion, functional
from fusedopt.memory.storage import numpy_dtype

BF16 = numpy_dtype("bfloat16")


def _params():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(50).astype(np.float32), rng.standard_normal(40).astype(BF16)]


@pytest.mark.parametrize("options, message", [
    (dict(stochastic_rounding=True), r"param 0 is float32 with float32 state; "
                                     r"stochastic_rounding=True means nothing"),
    (dict(kahan_summation=True), r"param 0 is float32 with float32 state; "
                                 r"kahan_summation=True means nothing"),
    (dict(kahan_summation=True, state_dtype="bfloat16"), r"param 0 is float32 .*kahan"),
])
def test_refused_per_param_and_nothing_changes(options, message):
    params = _params()
    before = [p.copy() for p in params]
    opt = Adam(**options)
    with pytest.raises(ValueError, match=message):
        opt.apply_gradients([(np.ones_like(p), p) for p in params])
    assert all(np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(params, before))
    assert opt.iterations == 0 and not opt.variables


def test_float64_params_are_refused():
    p = np.zeros(4)
    with pytest.raises(ValueError, match="param 0 is float64.*stochastic_rounding"):
        SGD(stochastic_rounding=True).apply_gradients([(np.ones(4), p)])


def test_float32_params_with_bfloat16_state_round_their_state():
    p = np.ones(64, np.float32)
    opt = Adam(stochastic_rounding=True, state_dtype="bfloat16")
    opt.apply_gradients([(np.full(64, 0.3, np.float32), p)])
    m = opt.state(p)["m"].astype(np.float64)
    assert len(np.unique(m)) == 2  # 0.03 is not a bfloat16: both neighbours were drawn


@pytest.mark.parametrize("options, message", [
    (dict(stochastic_rounding=True, master_weights=True), "stochastic_rounding=True with "
                                                          "master_weights=True"),
    (dict(kahan_summation=True, master_weights="remainder"), "kahan_summation=True with "
                                                             "master_weights='remainder'"),
    (dict(stochastic_rounding=True, kahan_summation=True), "choose one"),
    (dict(stochastic_rounding=1), "stochastic_rounding must be True or False"),
    (dict(seed=-1), r"seed must be an int in \[0, 2\*\*32\)"),
    (dict(seed=2 ** 32), r"seed must be an int"),
    (dict(seed=1.5), r"seed must be an int"),
])
def test_refused_at_construction(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Lion(**options)
    with pytest.raises((ValueError, TypeError), match=message):
        functional.update("lion", [np.zeros(3, BF16)], [np.zeros(3, BF16)],
                          [[np.zeros(3, np.float32)]], step=1, **options)


def test_config_round_trip():
    opt = Adam(stochastic_rounding=True, seed=123)
    cfg = opt.get_config()
    assert (cfg["stochastic_rounding"], cfg["seed"]) == (True, 123)
    assert "kahan_summation" not in cfg
    again = Adam.from_config(cfg)
    assert again.get_config() == cfg and again.seed == 123
    kahan = SGD(kahan_summation=True)
    assert kahan.get_config()["kahan_summation"] is True
    assert "seed" not in Adam().get_config()  # the Keras keys, unless a seed was chosen


def test_state_dict_carries_seed_and_compensation():
    p = np.ones(10, BF16)
    opt = Adam(kahan_summation=True, seed=5)
    opt.apply_gradients([(np.full(10, 0.1, BF16), p)])
    state = opt.state_dict()
    assert state["seed"] == 5
    assert state["state"][0]["compensation"].dtype == BF16
    other = Adam(kahan_summation=True)
    other.build([p.copy()])
    other.load_state_dict(pickle.loads(pickle.dumps(state)))
    assert other.seed == 5
    plain = Adam(seed=5)
    plain.build([p.copy()])
    with pytest.raises(ValueError, match="compensation"):
        plain.load_state_dict(state)


RESUME = textwrap.dedent("""
    import sys
    import numpy as np
    import fusedopt
    ckpt, param_path, grads_path, k, out = sys.argv[1:6]
    p = np.load(param_path)
    from fusedopt.memory.storage import numpy_dtype
    p = p.view(numpy_dtype("bfloat16")).copy()
    opt = fusedopt.load(ckpt, [p])
    for g in np.load(grads_path)[int(k):]:
        opt.apply_gradients([(g.astype(p.dtype), p)])
    np.save(out, p.view(np.uint16))
""")


@pytest.mark.parametrize("options", [dict(stochastic_rounding=True, state_dtype="bfloat16",
                                          seed=77), dict(kahan_summation=True)],
                         ids=["stochastic", "kahan"])
def test_resume_in_a_new_process_continues_the_bits(tmp_path, options):
    rng = np.random.default_rng(1)
    start = rng.standard_normal(3001).astype(BF16)
    grads = rng.standard_normal((6, 3001)).astype(np.float32)
    k = 3
    whole = start.copy()
    opt = Adam(learning_rate=0.01, **options)
    for g in grads:
        opt.apply_gradients([(g.astype(BF16), whole)])
    part = start.copy()
    opt = Adam(learning_rate=0.01, **options)
    for g in grads[:k]:
        opt.apply_gradients([(g.astype(BF16), part)])
    opt.save(tmp_path / "opt.safetensors")  # the checkpoint path: safetensors + JSON header
    np.save(tmp_path / "param.npy", part.view(np.uint16))
    np.save(tmp_path / "grads.npy", grads)
    subprocess.run([sys.executable, "-c", RESUME, str(tmp_path / "opt.safetensors"),
                    str(tmp_path / "param.npy"), str(tmp_path / "grads.npy"), str(k),
                    str(tmp_path / "out.npy")], check=True)
    resumed = np.load(tmp_path / "out.npy")
    assert np.array_equal(resumed, whole.view(np.uint16))
    assert not np.array_equal(resumed, start.view(np.uint16))
