"""Checkpoints (fusedopt/checkpoint.py): a documented format, read without running code,
written atomically, refused when they do not fit, and resumed bit for bit in a new process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import checkpoint_worker as worker
import numpy as np
import pytest

import fusedopt
from fusedopt import checkpoint

HERE = Path(__file__).resolve().parent


def _trained(steps=3, **hyper):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in [(3,), (4, 5), ()]]
    opt = fusedopt.Adam(learning_rate=0.1, **hyper)
    for _ in range(steps):
        opt.apply_gradients([(rng.standard_normal(p.shape).astype(np.float32), p)
                             for p in params])
    return opt, params


def _snapshot(opt, params):
    return ([p.copy() for p in params], [np.array(s) for s in opt.variables], opt.iterations)


def _assert_unchanged(opt, params, snapshot):
    before_params, before_state, iterations = snapshot
    for p, b in zip(params, before_params):
        assert p.tobytes() == b.tobytes()
    assert len(opt.variables) == len(before_state)
    for s, b in zip(opt.variables, before_state):
        assert s.tobytes() == b.tobytes() and s.dtype == b.dtype
    assert opt.iterations == iterations


# --- the format --------------------------------------------------------------------------------

def test_format_holds_class_config_counts_and_every_state_array(tmp_path):
    """Read back with safetensors itself, not with fusedopt's reader."""
    from safetensors import safe_open
    opt, params = _trained(amsgrad=True, weight_decay=0.01)
    path = tmp_path / "opt.safetensors"
    opt.save(path)
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["fusedopt"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["format"] == "fusedopt.optimizer" and meta["version"] == 1
    assert (meta["class"], meta["optimizer"], meta["convention"]) == ("Adam", "adam", "keras")
    assert meta["config"] == json.loads(json.dumps(opt.get_config()))
    assert meta["iterations"] == 3 and meta["seed"] == 0  # the default stochastic-rounding seed
    assert [e["shape"] for e in meta["params"]] == [[3], [4, 5], []]
    assert all(e["dtype"] == "float32" and e["decays"] for e in meta["params"])
    assert [s["name"] for s in meta["params"][0]["slots"]] == ["m", "v", "vhat"]
    assert sorted(arrays) == sorted(f"state/{i}/{n}" for i in range(3) for n in ("m", "v", "vhat"))
    for i, p in enumerate(params):
        for name, s in opt.state(p).items():
            assert arrays[f"state/{i}/{name}"].dtype == s.dtype
            assert arrays[f"state/{i}/{name}"].tobytes() == s.tobytes()


def test_loading_never_unpickles(tmp_path):
    """A pickle that would create a file when unpickled, under a checkpoint's name: the
    loader refuses it as 'not a safetensors file', and the file is never created."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle
    bad = tmp_path / "opt.safetensors"
    bad.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(checkpoint.CheckpointMismatch, match="not a safetensors file"):
        fusedopt.load(bad)
    with pytest.raises(checkpoint.CheckpointMismatch, match="not a safetensors file"):
        fusedopt.Adam().load(bad)
    assert not marker.exists()
    pickle.loads(bad.read_bytes())  # the payload works: it was the loader that refused it
    assert marker.exists()


def test_model_weights_are_not_an_optimizer_checkpoint(tmp_path):
    from safetensors.numpy import save_file
    path = tmp_path / "model.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(checkpoint.CheckpointMismatch, match="without fusedopt's metadata"):
        fusedopt.load(path)


def _every_pattern(dtype):
    import ml_dtypes
    return np.arange(2**16, dtype=np.uint16).view(getattr(ml_dtypes, dtype, None) or dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_arrays_round_trip_bit_for_bit(tmp_path, dtype):
    """Every bit pattern of the type (NaN payloads, signed zeros, subnormals included), with
    its logical dtype: the format is generic over dtypes, whatever optimizers hold today."""
    arrays = {"state/0/m": _every_pattern(dtype), "state/1/m": _every_pattern(dtype)[::-1]}
    path = tmp_path / "x.safetensors"
    checkpoint.write(path, arrays, {"format": checkpoint.FORMAT, "version": 1})
    meta, back = checkpoint.read(path)
    for name, a in arrays.items():
        assert back[name].dtype.name == dtype
        assert back[name].view(np.uint16).tobytes() == a.view(np.uint16).tobytes()


def test_float32_specials_round_trip_bit_for_bit(tmp_path):
    bits = np.array([0, 0x80000000, 1, 0x007FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001,
                     0xFFFFFFFF, 0x3F800000], np.uint32)
    path = tmp_path / "x.safetensors"
    checkpoint.write(path, {"a": bits.view(np.float32), "b": bits.view(np.float32).reshape(3, 3)},
                     {"format": checkpoint.FORMAT, "version": 1})
    _, back = checkpoint.read(path)
    assert back["a"].view(np.uint32).tolist() == bits.tolist()
    assert back["b"].shape == (3, 3)


# --- refusals: clear errors, nothing changed ---------------------------------------------------

def _rewrite_meta(path, change):
    meta, arrays = checkpoint.read(path)
    change(meta)
    checkpoint.write(path, arrays, meta)


def _mismatch_cases():
    def other_class(tmp):
        return fusedopt.Adamax(learning_rate=0.1)

    def other_convention(tmp):
        return fusedopt.Adam(learning_rate=0.1, convention="torch")

    def other_slots(tmp):
        return fusedopt.Adam(learning_rate=0.1, amsgrad=True)

    return {
        "class": (other_class, None, r"it is a Adam \('adam'\) checkpoint, the optimizer is a "
                                     r"Adamax"),
        "convention": (other_convention, None, r"saved in the 'keras' convention"),
        "slot names": (other_slots, None, r"param 0 has state slots \['m', 'v'\] in the "
                                          r"checkpoint, \['m', 'v', 'vhat'\] here"),
        "shape": (None, lambda m: m["params"][1].update(shape=[5, 4]),
                  r"param 1 has shape \(5, 4\) in the checkpoint, \(4, 5\) here"),
        "dtype": (None, lambda m: m["params"][2].update(dtype="float64"),
                  r"param 2 is float64 in the checkpoint, float32 here"),
        "param count": (None, lambda m: m["params"].pop(),
                        r"it holds state for 2 params, the optimizer is given 3"),
        "version": (None, lambda m: m.update(version=2),
                    r"format version 2; this fusedopt reads version 1"),
        "format": (None, lambda m: m.update(format="something.else"),
                   r"holds format 'something.else'"),
    }


MISMATCHES = _mismatch_cases()


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_mismatched_checkpoint_is_refused_and_changes_nothing(tmp_path, case):
    make_other, change, match = MISMATCHES[case]
    saved, saved_params = _trained()
    path = tmp_path / "opt.safetensors"
    saved.save(path)
    if change is not None:
        _rewrite_meta(path, change)
    target = make_other(tmp_path) if make_other else fusedopt.Adam(learning_rate=0.1)
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(p.shape).astype(np.float32) for p in saved_params]
    target.apply_gradients([(np.ones_like(p), p) for p in params])
    snapshot = _snapshot(target, params)
    with pytest.raises(checkpoint.CheckpointMismatch, match=match):
        target.load(path)
    _assert_unchanged(target, params, snapshot)


def test_state_dtype_mismatch_is_refused(tmp_path):
    """An array whose dtype differs from the state it would go into (a float64 checkpoint of
    the same shapes): refused, not converted."""
    opt, params = _trained()
    path = tmp_path / "opt.safetensors"
    opt.save(path)
    meta, arrays = checkpoint.read(path)
    arrays = {k: a.astype(np.float64) for k, a in arrays.items()}
    for entry in meta["params"]:
        entry["dtype"] = "float32"
        for s in entry["slots"]:
            s["dtype"] = "float64"
    checkpoint.write(path, arrays, meta)
    snapshot = _snapshot(opt, params)
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"state 'm' is float64 in the "
                                                          r"checkpoint, float32 here"):
        opt.load(path)
    _assert_unchanged(opt, params, snapshot)


def test_pending_checkpoint_checks_the_first_step_and_builds_nothing_on_mismatch(tmp_path):
    opt, params = _trained()
    path = tmp_path / "opt.safetensors"
    opt.save(path)
    loaded = fusedopt.load(path)                 # no params yet: pending until its first step
    assert loaded.iterations == 3 and not loaded._params
    wrong = [np.zeros(3, np.float32), np.zeros((5, 4), np.float32), np.zeros((), np.float32)]
    before = [w.copy() for w in wrong]
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"param 1 has shape"):
        loaded.apply_gradients([(np.ones_like(w), w) for w in wrong])
    assert not loaded._params and loaded.iterations == 3
    for w, b in zip(wrong, before):
        assert w.tobytes() == b.tobytes()
    right = [p.copy() for p in params]
    loaded.apply_gradients([(np.ones_like(p), p) for p in right])    # now it fits
    opt.apply_gradients([(np.ones_like(p), p) for p in params])
    assert loaded.iterations == opt.iterations == 4
    for a, b in zip(right, params):
        assert a.tobytes() == b.tobytes()


def test_schedules_are_not_stored_as_code(tmp_path):
    def schedule(step):
        return 0.1 / (1 + step)

    rng = np.random.default_rng(1)
    p = rng.standard_normal(4).astype(np.float32)
    opt = fusedopt.Adam(learning_rate=schedule)
    opt.apply_gradients([(np.ones(4, np.float32), p)])
    path = tmp_path / "opt.safetensors"
    opt.save(path)
    meta, _ = checkpoint.read(path)
    assert meta["config"]["learning_rate"] == {"schedule": repr(schedule)}
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"learning_rate was a schedule when "
                                                          r"saved .* pass it again"):
        fusedopt.load(path)
    resumed = fusedopt.load(path, [p.copy()], learning_rate=schedule)
    assert resumed.learning_rate is schedule and resumed.iterations == 1


def test_weight_decay_exclusions_are_restored(tmp_path):
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(6).astype(np.float32) for _ in range(3)]
    opt = fusedopt.AdamW(learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_list=[params[1]])
    grads = [[rng.standard_normal(6).astype(np.float32) for _ in params] for _ in range(4)]
    opt.apply_gradients(zip(grads[0], params))
    path = tmp_path / "opt.safetensors"
    opt.save(path)
    copies = [p.copy() for p in params]
    resumed = fusedopt.load(path, copies)
    for g in grads[1:]:
        opt.apply_gradients(zip(g, params))
        resumed.apply_gradients(zip(g, copies))
    for a, b in zip(params, copies):
        assert a.tobytes() == b.tobytes()
    plain = fusedopt.AdamW(learning_rate=0.1, weight_decay=0.5)   # decays every param
    plain.apply_gradients(zip(grads[0], [p.copy() for p in params]))
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"param 1: weight decay is "
                                                          r"excluded in the checkpoint"):
        plain.load(path)


def test_save_replaces_the_file_and_leaves_nothing_else(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "opt.safetensors"
    opt.save(path)
    first = path.stat().st_ino
    opt.save(path)
    assert sorted(os.listdir(tmp_path)) == ["opt.safetensors"]
    assert path.stat().st_ino != first            # a new file renamed over the old one
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# --- a writer killed at any point leaves the previous checkpoint -------------------------------

KILL_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
import fusedopt
from fusedopt import checkpoint
path, where, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
p = rng.standard_normal(n).astype(np.float32)
opt = fusedopt.Adam(learning_rate=0.1)
opt.apply_gradients([(rng.standard_normal(n).astype(np.float32), p)])
opt.save(path)
np.save(path.with_name("expected.npy"), np.stack([np.array(s) for s in opt.variables]))
opt.apply_gradients([(rng.standard_normal(n).astype(np.float32), p)])

def stop_here(*args):
    path.with_name("stopped").touch()
    time.sleep(600)

if where == "after-create":
    checkpoint._after_create = stop_here
elif where == "before-rename":
    checkpoint._fsync_file = stop_here
else:
    path.with_name("second-save").touch()
opt.save(path)
path.with_name("finished").touch()
"""


def _temporary_with_bytes(folder) -> bool:
    for name in os.listdir(folder):
        if ".tmp" in name:
            try:
                if (folder / name).stat().st_size > 0:
                    return True
            except FileNotFoundError:  # renamed meanwhile
                pass
    return False


def _run_and_kill(tmp_path, where, n, signal_file, timeout=120):
    path = tmp_path / "opt.safetensors"
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path), where, str(n)],
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not (tmp_path / signal_file).exists():
            assert child.poll() is None, f"the writer exited early: {child.stderr.read()}"
            assert time.monotonic() < deadline, "the writer never reached the kill point"
            time.sleep(0.0005)
        if where == "during-write":  # kill as soon as bytes of the new file are on disk
            while not _temporary_with_bytes(tmp_path):
                assert child.poll() is None, "the second save finished before it was seen"
                time.sleep(0.0002)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "finished").exists()
    return path


@pytest.mark.parametrize("where, n, signal_file", [
    ("after-create", 1000, "stopped"),          # the temporary file exists, nothing in it
    ("during-write", 8_000_000, "second-save"),  # 64 MB of state being written
    ("before-rename", 1000, "stopped"),          # written and flushed, not yet renamed
])
def test_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, where, n,
                                                               signal_file):
    path = _run_and_kill(tmp_path, where, n, signal_file)
    expected = np.load(tmp_path / "expected.npy")
    meta, arrays = checkpoint.read(path)
    assert meta["iterations"] == 1
    assert arrays["state/0/m"].tobytes() == expected[0].tobytes()
    assert arrays["state/0/v"].tobytes() == expected[1].tobytes()
    resumed = fusedopt.load(path, [np.zeros(n, np.float32)])
    assert resumed.iterations == 1
    leftovers = [f for f in os.listdir(tmp_path) if ".tmp" in f]
    assert leftovers, "the kill came after the rename: the test did not test the crash"


# --- resumed in a new process: the bits of the uninterrupted run -------------------------------

def _run_worker(phase, backend, folder, host_cache=None):
    args = [sys.executable, str(HERE / "checkpoint_worker.py"), phase, backend, str(folder)]
    if host_cache is not None:
        args.append(str(host_cache))
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]


def _assert_resumed_bitwise(backend, folder, host_cache=None):
    expected = worker.uninterrupted(backend)
    _run_worker("first", backend, folder, host_cache)
    _run_worker("second", backend, folder, host_cache)
    for label, (params, states) in expected.items():
        dtype = params[0].dtype
        for i, p in enumerate(params):
            got = np.load(folder / f"{label}-final{i}.npy").view(dtype)
            assert got.shape == p.shape and got.tobytes() == p.tobytes(), (label, i)
        for k, s in enumerate(states):
            got = np.load(folder / f"{label}-state{k}.npy").view(s.dtype)  # its own dtype
            assert got.tobytes() == s.tobytes(), (label, "state", k)


def test_resume_in_new_process_is_bitwise_on_the_cpu_backend(tmp_path):
    """Every registered optimizer in float32 and bfloat16, Adam in every dtype
    (tests/checkpoint_worker.py: cases)."""
    _assert_resumed_bitwise("cpu", tmp_path)


def test_resume_in_new_process_is_bitwise_through_cuda_host_execution(host_cuda, tmp_path,
                                                                      cuda_cache_dir):
    _assert_resumed_bitwise("cuda", tmp_path, cuda_cache_dir)
    assert host_cuda.launches  # the uninterrupted run went through the CUDA kernels


# --- 16-bit params: the master slot travels and must match ----------------------------------

@pytest.mark.parametrize("master_weights", [True, "remainder"])
def test_a_bf16_master_is_saved_loaded_and_continued_bit_for_bit(tmp_path, master_weights):
    import ml_dtypes
    rng = np.random.default_rng(0)
    start = rng.standard_normal(1000).astype(ml_dtypes.bfloat16)
    grads = [rng.standard_normal(1000).astype(ml_dtypes.bfloat16) for _ in range(5)]
    p = start.copy()
    opt = fusedopt.AdamW(learning_rate=1e-2, master_weights=master_weights)
    for g in grads[:3]:
        opt.apply_gradients([(g, p)])
    path = tmp_path / "opt.safetensors"
    opt.save(path)
    q = p.copy()
    resumed = fusedopt.load(path, [q])
    for g in grads[3:]:
        opt.apply_gradients([(g, p)])
        resumed.apply_gradients([(g.copy(), q)])
    assert resumed.iterations == 5 and p.tobytes() == q.tobytes()
    for a, b in zip(opt._engine.states[0], resumed._engine.states[0]):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    plain = fusedopt.AdamW(learning_rate=1e-2)
    other = q.copy()
    plain.apply_gradients([(grads[0], other)])
    before = [s.copy() for s in plain._engine.states[0]]
    with pytest.raises(fusedopt.checkpoint.CheckpointMismatch, match="master_weights differ"):
        plain.load(path)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, plain._engine.states[0]))


def test_moving_averages_are_saved_and_resumed(tmp_path):
    """use_ema: the averages travel in the checkpoint, and the resumed run's params and
    averages are the uninterrupted run's."""
    rng = np.random.default_rng(1)
    p = rng.standard_normal(300).astype(np.float32)
    grads = [rng.standard_normal(300).astype(np.float32) for _ in range(6)]
    opt = fusedopt.Adam(learning_rate=1e-2, use_ema=True, ema_momentum=0.9)
    for g in grads[:3]:
        opt.apply_gradients([(g, p)])
    path = tmp_path / "ema.safetensors"
    opt.save(path)
    q = p.copy()
    resumed = fusedopt.load(path, [q])
    for g in grads[3:]:
        opt.apply_gradients([(g, p)])
        resumed.apply_gradients([(g.copy(), q)])
    assert p.tobytes() == q.tobytes()
    assert opt.moving_average(p).tobytes() == resumed.moving_average(q).tobytes()
    assert not np.array_equal(opt.moving_average(p), p)
    plain = fusedopt.Adam(learning_rate=1e-2)
    plain.apply_gradients([(grads[0], q.copy())])
    with pytest.raises(checkpoint.CheckpointMismatch, match="moving averages"):
        plain.load(path)
