"""CPU threads: fusedopt's Numba pool and torch's OpenMP pool share one process.

What was found (benchmarks/RESULTS.md, "The Adam step inside a torch CPU training loop"):
Numba's default threading layer here is ``omp``, built against the system's GNU OpenMP
(it asks for ``libgomp.so.1.0.0``), while torch's wheel ships its own copy
(``torch/lib/libgomp.so.1``). Imported after torch, Numba loads the second copy: two
OpenMP runtimes, two pools of busy-waiting threads, each spinning on the cores the other
needs right after its own work (torch's after the backward pass, while the optimizer
steps; Numba's after the step, while the next forward runs). Started before torch,
Numba's layer loads the system copy first, and torch's libraries then bind to that same
runtime (the dynamic linker matches its soname): one pool, whose threads are the ones
torch has just used.

So, ``import fusedopt.torch`` in a process that has not imported torch yet starts Numba's
threads (public API: ``numba.get_num_threads()``) before importing torch. Once torch is
loaded, Numba's pool is sized to torch's intra-op threads (``torch.get_num_threads()``), so
the two never ask for more threads than torch was given. Neither is done where the user
chose: ``NUMBA_THREADING_LAYER`` or ``NUMBA_NUM_THREADS`` in the environment, or a layer
already started, are left as they are. ``fusedopt.torch.THREADS`` says what was done.

After that, every step reads ``torch.get_num_threads()`` again (fusedopt/torch/optimizer.py,
fusedopt/backends/cpu/threads.py), so a later ``torch.set_num_threads(k)`` holds for the
next step. The one runtime's idle threads sleep rather than spin (``OMP_WAIT_POLICY``, set
by ``import fusedopt`` before Numba's layer starts unless the user chose a wait policy):
torch's intra-op threads, being that runtime's, wait the same way.
"""

from __future__ import annotations

import os
import sys


def start_before_torch() -> dict:
    """Start Numba's threading layer before torch is imported, when nobody chose one."""
    import numba
    from numba.np.ufunc import parallel

    done = {"torch_was_imported": "torch" in sys.modules}
    # Numba keeps no public "started?" flag; a layer already running is left as it is.
    if done["torch_was_imported"] or "NUMBA_THREADING_LAYER" in os.environ \
            or getattr(parallel, "_is_initialized", False):
        return done
    numba.get_num_threads()  # launches the layer: its OpenMP runtime is now the process's
    done["started_before_torch"] = numba.threading_layer()
    return done


def match_torch(done: dict) -> dict:
    """Size Numba's pool to torch's intra-op threads (unless NUMBA_NUM_THREADS is set)."""
    import numba
    import torch

    if "NUMBA_NUM_THREADS" not in os.environ:
        threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)
        done["numba_threads"] = threads
    done["openmp_runtimes"] = openmp_runtimes()
    return done


def openmp_runtimes() -> list[str]:
    """The GNU OpenMP libraries mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
    except OSError:
        return []
    return sorted(paths)
