"""How many of Numba's threads a CPU step uses, and how its idle threads wait.

**Threads per step.** Each step asks :func:`step_threads` before it runs, with its element
count. It runs on the calling thread alone, without waking the pool (``run_serial`` of
fusedopt/backends/cpu/loop.py), when it has one work item, fewer than
``config.CPU_SERIAL_BELOW`` elements (measured: benchmarks/RESULTS.md, "Threads of the CPU
step"), or one thread to run on. Otherwise it runs on as many of Numba's threads as:

1. ``config.CPU_THREADS``, when set (a number);
2. else the caller's: fusedopt.torch steps with ``torch.get_num_threads()``, read at
   each step (:func:`following`), so ``torch.set_num_threads(k)`` holds for the next step;
3. else Numba's own setting (``NUMBA_NUM_THREADS``, or ``numba.set_num_threads``), left
   as it is.

Never more than Numba's pool (``NUMBA_NUM_THREADS``, the core count by default). The count
is compared with Numba's thread-local one at each step (a C call, under 0.1 µs) and
``numba.set_num_threads`` runs only when it differs.

**Wait policy.** Numba's default layer here is ``omp`` (GNU OpenMP; ``tbb`` where installed,
else ``workqueue``). GNU OpenMP's idle threads spin up to 300,000 rounds before they sleep:
on cores that another process holds, a spinning worker takes the time slices the step and
the caller need, and a 2^20-element Adam step took 8 ms instead of 0.25 ms (measured with
``GOMP_SPINCOUNT`` from 1,000 to 300,000: the step time grows with the spin count). So,
when nobody chose, :func:`prepare_runtime` sets ``OMP_WAIT_POLICY=PASSIVE`` (idle threads
sleep at once; OpenMP runtimes read it when they load) before Numba's layer starts. It is
left alone when ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` is set, when
Numba's layer has already started, or when ``config.CPU_WAIT_POLICY`` is None. The
variable is in the process's environment: an OpenMP runtime loaded later (torch's, when
fusedopt.torch is imported first; a child process's) waits the same way.
"""

from __future__ import annotations

import os
import sys
import threading

from ... import config

#: Environment variables by which a user chose how idle OpenMP threads wait.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def layer_started() -> bool:
    """Whether Numba's threading layer has started (its wait policy is then fixed)."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


def wait_variables(policy) -> dict:
    """The environment of wait policy ``policy``: "passive" (sleep at once), "active"
    (OpenMP's spin), or a number of spin rounds before sleeping (GNU OpenMP's
    ``GOMP_SPINCOUNT``)."""
    if isinstance(policy, str):
        return {"OMP_WAIT_POLICY": policy.upper()}
    return {"GOMP_SPINCOUNT": str(int(policy))}


def prepare_runtime() -> dict:
    """Set the wait policy of ``config.CPU_WAIT_POLICY`` before Numba's layer starts, unless
    the user chose one; returns what was set (empty: nothing)."""
    policy = config.CPU_WAIT_POLICY
    if policy is None or layer_started() or any(v in os.environ for v in WAIT_VARIABLES):
        return {}
    chosen = wait_variables(policy)
    os.environ.update(chosen)
    return chosen


class _Caller(threading.local):
    threads = None  # what the front door calling from this thread asked for (None: nothing)


_caller = _Caller()


class following:
    """``with following(n):`` steps from this thread run on ``n`` threads (the torch door's
    ``torch.get_num_threads()``), unless ``config.CPU_THREADS`` says otherwise."""

    __slots__ = ("threads", "before")

    def __init__(self, threads: int | None):
        self.threads = threads

    def __enter__(self):
        self.before, _caller.threads = _caller.threads, self.threads
        return self

    def __exit__(self, *exc):
        _caller.threads = self.before
        return False


_numba = None  # (numba module, its get_num_threads in C, its pool size) once the pool runs


def _pool():
    global _numba
    if _numba is None:
        import numba
        from numba.np.ufunc import parallel
        parallel._launch_threads()
        current = getattr(parallel, "_get_num_threads", None) or numba.get_num_threads
        _numba = (numba, current, numba.config.NUMBA_NUM_THREADS)
    return _numba


def wanted() -> int | None:
    """The threads a step from this thread asks for (None: Numba's setting as it is)."""
    return config.CPU_THREADS or _caller.threads


def step_threads(n_elements: int, n_work: int) -> int:
    """The threads this step runs on, Numba's set to that number where it is more than one;
    1 means the calling thread alone (``run_serial``)."""
    if n_work < 2 or n_elements < config.CPU_SERIAL_BELOW:
        return 1
    numba, current, pool = _pool()
    want = wanted()
    if want is None:
        return current()
    want = max(1, min(int(want), pool))
    if want > 1 and current() != want:
        numba.set_num_threads(want)
    return want
