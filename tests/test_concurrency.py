"""Threads, processes and read-only installs (fusedopt/engine/threads.py says how threads are made
safe under every Numba threading layer)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import concurrency_worker as worker
import numpy as np
import pytest

from fusedopt.algorithms import nadam as _registry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for key in want:
        assert np.asarray(got[key]).tobytes() == np.asarray(want[key]).tobytes(), key


@pytest.fixture(scope="module")
def sequential():
    """The bits to match: the two optimizers one after the other, in one thread."""
    return worker.run(sequential=True)


def test_two_threads_step_two_optimizers_like_a_sequential_run(sequential):
    """Adam (amsgrad) and Nadam (global clipnorm: the norm pass too) in two threads that
    start their first steps together, over a tensor big enough for the parallel loop."""
    _assert_same(worker.run(), sequential)


def _worker(out, *args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(HERE / "concurrency_worker.py"), str(out), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("layer", ["default", "omp", "workqueue"])
def test_threads_under_each_numba_threading_layer(layer, sequential, tmp_path):
    """A fresh process per layer (the layer is fixed when Numba's pool starts): workqueue,
    which cannot take two parallel calls at once, is run one step at a time under a lock."""
    out = _worker(tmp_path / "out.npz", env={"NUMBA_THREADING_LAYER": layer})
    assert out.returncode == 0, out.stderr[-3000:]
    if layer != "default":
        assert f"layer={layer}" in out.stdout
    _assert_same(dict(np.load(tmp_path / "out.npz")), sequential)


def test_workqueue_without_the_lock_aborts(tmp_path):
    """Why the lock is there: without it Numba's workqueue layer sees two parallel calls at
    once and ends the process."""
    out = _worker(tmp_path / "out.npz", "--no-lock", "--steps", "300",
                  env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert out.returncode != 0
    assert "Concurrent access has been detected" in out.stderr


def test_nadam_momentum_products_from_many_threads_at_once():
    """The memo of Nadam's momentum products grows under a lock: without it, two threads
    extending it together appended the same step twice (most runs of this test failed)."""
    sys_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for trial in range(5):
            key = (0.9 - 1e-4 * trial - 1e-7, 0.004)
            memo = (*key, False)  # the memo's key: (b1, psi, rounded to float32)
            _registry._MOMENTUM_PRODUCTS.pop(memo, None)
            got, barrier = {}, threading.Barrier(8)

            def work(i):
                barrier.wait()
                got[i] = [_registry.nadam_momentum_product(*key, t) for t in range(1, 2000)]

            threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _registry._MOMENTUM_PRODUCTS.pop(memo)
            want = [_registry.nadam_momentum_product(*key, t) for t in range(1, 2000)]
            assert all(v == want for v in got.values())
    finally:
        sys.setswitchinterval(sys_interval)


def test_two_processes_compile_into_one_empty_numba_cache(sequential, tmp_path):
    """Both compile at the same moment into one empty cache folder (each with two threads
    stepping at once), both succeed with the sequential bits; a third process then runs
    from that cache alone."""
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    go = tmp_path / "go"
    children = [subprocess.Popen([sys.executable, str(HERE / "concurrency_worker.py"),
                                  str(tmp_path / f"out{i}.npz"), "--wait", str(go)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env) for i in range(2)]
    time.sleep(1.0)  # both are importing or waiting: release them together
    go.touch()
    for child in children:
        _, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr[-3000:]
    for i in range(2):
        _assert_same(dict(np.load(tmp_path / f"out{i}.npz")), sequential)
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))
    third = _worker(tmp_path / "out2.npz", env={"NUMBA_CACHE_DIR": str(cache)})
    assert third.returncode == 0, third.stderr[-3000:]
    assert "cache_misses=0" in third.stdout and "cache_hits=0" not in third.stdout
    _assert_same(dict(np.load(tmp_path / "out2.npz")), sequential)


# --- a read-only install ------------------------------------------------------------------------

READ_ONLY_STEP = """
import os, sys
from pathlib import Path
site, home = Path(sys.argv[1]), Path(sys.argv[2])
assert not os.access(site, os.W_OK) and not os.access(home, os.W_OK), "still writable"
import numpy as np
import fusedopt
assert Path(fusedopt.__file__).is_relative_to(site), fusedopt.__file__
from fusedopt.backends.cpu._cache import JIT_OPTIONS
assert JIT_OPTIONS["cache"] is False, "no writable cache: Numba caching must be off"
p = np.linspace(-1, 1, 300_000, dtype=np.float32)
g = np.cos(np.arange(p.size, dtype=np.float32))
opt = fusedopt.Adam(learning_rate=0.01)
for _ in range(2):
    opt.apply_gradients([(g, p)])
print(p.tobytes().hex()[:64], p.view(np.uint32).sum(dtype=np.uint64))
"""


def _read_only_step_here() -> list[str]:
    """What READ_ONLY_STEP prints, computed by the fusedopt under test in this process."""
    import fusedopt
    p = np.linspace(-1, 1, 300_000, dtype=np.float32)
    g = np.cos(np.arange(p.size, dtype=np.float32))
    opt = fusedopt.Adam(learning_rate=0.01)
    for _ in range(2):
        opt.apply_gradients([(g, p)])
    return [p.tobytes().hex()[:64], str(p.view(np.uint32).sum(dtype=np.uint64))]


def _drop_write_privileges() -> list[str]:
    """A prefix that runs a command unable to write where its permissions say no: as root,
    without the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
            "--inh-caps", "-all"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(out)], check=True, timeout=300)
    return next(out.glob("fusedopt-*.whl"))


def test_read_only_install_steps_with_an_unwritable_cache(wheel, tmp_path):
    site, home = tmp_path / "site", tmp_path / "home"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    home.mkdir()
    before = sorted(str(p) for p in site.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(site), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    subprocess.run(["chmod", "-R", "a-w", str(site), str(home)], check=True)
    try:
        out = subprocess.run([*_drop_write_privileges(), sys.executable, "-c", READ_ONLY_STEP,
                              str(site), str(home)], capture_output=True, text=True,
                             timeout=600, env=env, cwd=tmp_path)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(site), str(home)], check=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == _read_only_step_here()   # the bits of this process's step
    assert sorted(str(p) for p in site.rglob("*")) == before   # nothing written there
    assert not list(home.rglob("*"))
