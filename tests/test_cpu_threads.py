"""The CPU step's threads (fusedopt/backends/cpu/threads.py): how many run each step, who
decides, which steps stay on the calling thread, how idle threads wait, and that no
thread count changes a result."""

import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fusedopt
from fusedopt import config
from fusedopt.backends.cpu import backend, threads

pytestmark = pytest.mark.filterwarnings("ignore::numba.NumbaPerformanceWarning")

_ENV_CHOICES = ("NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY",
                "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _fresh(code: str, **env) -> dict:
    """Run ``code`` in a fresh process (its last line printed is JSON) with ``env``."""
    run_env = {k: v for k, v in os.environ.items() if k not in _ENV_CHOICES}
    run_env.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def used(monkeypatch):
    """The threads of each CPU step from now on: Numba's count inside a parallel step,
    1 for a step on the calling thread."""
    seen = []
    real_run, real_serial = backend.run, backend.run_serial

    def run(*args):
        seen.append(numba.get_num_threads())
        return real_run(*args)

    def run_serial(*args):
        seen.append(1)
        return real_serial(*args)

    monkeypatch.setattr(backend, "run", run)
    monkeypatch.setattr(backend, "run_serial", run_serial)
    before = numba.get_num_threads()
    yield seen
    numba.set_num_threads(before)


_TORCH_PROBE = """
import json, numba
import fusedopt.torch as ft
import torch
from fusedopt import config
from fusedopt.backends.cpu import backend
config.CPU_SERIAL_BELOW = 0  # every step of several work items may use the pool
seen = []
real = backend.run, backend.run_serial
backend.run = lambda *a: (seen.append(numba.get_num_threads()), real[0](*a))
backend.run_serial = lambda *a: (seen.append(1), real[1](*a))
p = torch.zeros(1 << 18, requires_grad=True)
p.grad = torch.randn(1 << 18)
opt = ft.Adam([p])
for k in (3, 1, 2, 3, 2):
    torch.set_num_threads(k)
    opt.step()
print(json.dumps({"seen": seen, "after": numba.get_num_threads()}))
"""


def test_torch_set_num_threads_holds_for_the_next_step():
    seen = _fresh(_TORCH_PROBE, NUMBA_NUM_THREADS="3")
    assert seen["seen"] == [3, 1, 2, 3, 2]


def test_a_fusedopt_setting_outranks_torch():
    code = _TORCH_PROBE.replace("import fusedopt.torch as ft",
                                "import fusedopt.torch as ft, fusedopt.config as c\n"
                                "c.CPU_THREADS = 2")
    assert _fresh(code, NUMBA_NUM_THREADS="3")["seen"] == [2, 2, 2, 2, 2]


def _adam_step(n: int):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    opt = fusedopt.Adam(learning_rate=1e-3, backend="cpu")
    for _ in range(3):
        opt.apply_gradients([(rng.standard_normal(n).astype(np.float32), p)])
    return p


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs a pool of 2 threads")
def test_results_are_the_same_bits_on_any_thread_count(used, monkeypatch):
    n = 4 * config.CPU_CHUNK + 123
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 0)
    results = {}
    for count in (2, 1):
        monkeypatch.setattr(config, "CPU_THREADS", count)
        results[count] = _adam_step(n)
    monkeypatch.setattr(config, "CPU_THREADS", None)
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", n + 1)
    results["serial"] = _adam_step(n)
    assert used == [2] * 3 + [1] * 3 + [1] * 3
    assert results[2].tobytes() == results[1].tobytes() == results["serial"].tobytes()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs a pool of 2 threads")
def test_a_step_below_the_size_runs_on_the_calling_thread(used, monkeypatch):
    monkeypatch.setattr(config, "CPU_CHUNK", 1024)  # several work items, few elements
    monkeypatch.setattr(config, "CPU_THREADS", 2)
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 8192)
    _adam_step(8191)
    _adam_step(8192)
    assert used == [1] * 3 + [2] * 3


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs a pool of 2 threads")
def test_without_torch_numbas_own_setting_is_left_as_it_is(used, monkeypatch):
    monkeypatch.setattr(config, "CPU_THREADS", None)
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 0)
    numba.set_num_threads(1)
    _adam_step(4 * config.CPU_CHUNK)
    numba.set_num_threads(2)
    _adam_step(4 * config.CPU_CHUNK)
    assert used == [1] * 3 + [2] * 3
    assert threads.wanted() is None


_WAIT_PROBE = """
import json, os
import fusedopt
import numba
numba.get_num_threads()
names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
print(json.dumps({k: os.environ[k] for k in names if k in os.environ}))
"""


def test_idle_threads_wait_as_configured_unless_the_user_chose():
    chosen = threads.wait_variables(config.CPU_WAIT_POLICY)
    assert chosen and _fresh(_WAIT_PROBE) == chosen
    assert _fresh(_WAIT_PROBE, OMP_WAIT_POLICY="active") == {"OMP_WAIT_POLICY": "active"}
    assert _fresh(_WAIT_PROBE, KMP_BLOCKTIME="0") == {"KMP_BLOCKTIME": "0"}


def test_a_started_layer_keeps_its_wait_policy():
    code = _WAIT_PROBE.replace("import fusedopt\n", "import numba\nnumba.get_num_threads()\n"
                               "import fusedopt\n")
    assert _fresh(code) == {}


def test_work_items_handed_out_one_at_a_time_give_the_same_bits_and_restore_the_callers(
        monkeypatch):
    """config.CPU_DYNAMIC_ITEMS: the pool's threads take the work items one at a time
    (Numba's chunk size 1) for the step only; the caller's own chunk size is set back, and
    the bits are those of the static split."""
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 0)
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(n).astype(np.float32) for n in (300_000, 70_001, 5)]
    grads = [rng.standard_normal(p.size).astype(np.float32) for p in start]
    out = []
    for dynamic in (True, False):
        monkeypatch.setattr(config, "CPU_DYNAMIC_ITEMS", dynamic)
        params = [p.copy() for p in start]
        before = numba.set_parallel_chunksize(7)
        try:
            opt = fusedopt.Adam(learning_rate=0.01)
            for _ in range(2):
                opt.apply_gradients(list(zip(grads, params)))
            assert numba.get_parallel_chunksize() == 7
        finally:
            numba.set_parallel_chunksize(before)
        out.append(params)
    assert all(np.array_equal(a, b) for a, b in zip(*out))
