"""CPU steps from several Python threads at once, whatever Numba's threading layer.

Numba runs a parallel loop on the thread pool of its threading layer, chosen when the pool
first starts: ``NUMBA_THREADING_LAYER``, else the first of tbb, omp and workqueue that
loads. tbb and omp take parallel calls from several Python threads at once; workqueue does
not (Numba's documentation, "The Threading Layers": concurrent calls from more than one
thread are unsafe, and Numba aborts the process when it sees one). fusedopt leaves the
choice to the user and, when the layer is workqueue, runs CPU steps one at a time under a
lock; with tbb or omp the steps of two optimizers in two threads run at once.
"""

from __future__ import annotations

import contextlib
import threading

_LOCK = threading.Lock()
_NO_LOCK = contextlib.nullcontext()
_guard = None


def threading_layer() -> str:
    """The layer Numba's pool runs on (starting the pool if it has not started yet)."""
    import numba
    from numba.np.ufunc import parallel
    parallel._launch_threads()  # idempotent; the layer is only known once the pool runs
    return numba.threading_layer()


def cpu_guard():
    """The context a CPU backend call runs in: a lock under workqueue, else nothing."""
    global _guard
    if _guard is None:
        try:
            safe = threading_layer() != "workqueue"
        except Exception:  # a Numba without these internals: assume the unsafe layer
            safe = False
        _guard = _NO_LOCK if safe else _LOCK
    return _guard


def guard(backend):
    return cpu_guard() if backend.name == "cpu" else _NO_LOCK
