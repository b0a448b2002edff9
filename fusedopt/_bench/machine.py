"""A description of the machine a benchmark ran on, stored with its figures."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    """Installed version of ``package`` (distribution or import name), or None."""
    if package == "fusedopt":
        from .. import __version__
        return __version__
    names = {"cupy": ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")}
    for name in names.get(package, (package,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def numba_threads() -> dict:
    """Numba's thread count and threading layer (the layer is known once a parallel
    function has run; a tiny one is run here if none has)."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:
        from numba import njit, prange

        @njit(parallel=True)
        def _touch(n):
            total = 0
            for i in prange(n):
                total += i
            return total

        _touch(4)
        layer = numba.threading_layer()
    return {"threading_layer": layer, "threads": numba.get_num_threads(),
            "requested_layer": numba.config.THREADING_LAYER}


def gpu_name() -> str | None:
    from .._info import cuda_status

    if not cuda_status()[0]:
        return None
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def available_memory(backend: str) -> int | None:
    """Free bytes on the device the backend uses (None if unknown)."""
    if backend == "cuda":
        import cupy
        return int(cupy.cuda.Device().mem_info[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: Environment variables that change how many threads run and how idle ones wait.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_NUM_THREADS",
                    "NUMBA_THREADING_LAYER", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def caveats(threads: dict, torch_in_use: bool) -> list[str]:
    """What about this process can skew CPU figures, in words (empty if nothing known)."""
    out = []
    if torch_in_use and threads["threading_layer"] == "omp" and \
            "OMP_WAIT_POLICY" not in os.environ:
        out.append("Numba (omp layer) and torch each run an OpenMP thread pool in this process; "
                   "idle threads of one spin while the other works, which slows both on a "
                   "busy or small machine. Compare with OMP_WAIT_POLICY=PASSIVE or "
                   "NUMBA_THREADING_LAYER=workqueue.")
    return out


def describe() -> dict:
    out = {
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu_name(),
        "versions": {p: version(p) for p in ("fusedopt", "numpy", "numba", "cupy", "torch")},
        "numba": numba_threads(),
    }
    try:
        import torch
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return out
