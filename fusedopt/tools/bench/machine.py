"""The machine: a description of the one a benchmark ran on, stored with its figures, and
whether the CUDA backend can run here (``cuda_status``)."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _size(text: str) -> int | None:
    """'491520K', '32M', '480 MiB' -> bytes."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*$", text.strip())
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def l3_cache(cache_dir: Path = _CACHE_DIR) -> tuple[int | None, str]:
    """(bytes, where it was read) of the last-level (L3) cache cpu0 sees; (None, why) if
    unknown. Read from sysfs, else from ``lscpu``. On a virtual machine this is what the
    hypervisor reports, which may exceed what one core can use."""
    for index in sorted(cache_dir.glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                size = _size((index / "size").read_text())
                if size:
                    return size, str(index / "size")
        except OSError:
            continue
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("L3 cache:"):
            size = _size(line.split(":", 1)[1].split("(")[0])
            if size:
                return size, "lscpu"
    return None, "no L3 size in sysfs or lscpu"


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def version(package: str) -> str | None:
    """Installed version of ``package`` (distribution or import name), or None."""
    if package == "fusedopt":
        from ... import __version__
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


def describe(torch_threads: bool = True) -> dict:
    """The machine and this process's threads. ``torch_threads``: also import torch to
    report its thread count (a parent of isolated workers passes False: they report their
    own)."""
    out = {
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu_name(),
        "versions": {p: version(p) for p in ("fusedopt", "numpy", "numba", "cupy", "torch")},
        "numba": numba_threads(),
        "l3_cache_bytes": l3_cache()[0],
        "l3_cache_source": l3_cache()[1],
        "load_average": load_average(),
    }
    if torch_threads:
        try:
            import torch
            out["torch_threads"] = torch.get_num_threads()
        except ImportError:
            pass
    return out


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


@functools.lru_cache(maxsize=None)
def cuda_status() -> tuple[bool, str]:
    """(usable, why): can the CUDA backend run here? ``why`` names what is missing."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'fusedopt[cuda12]' or '[cuda13]')"
    except Exception as error:  # a broken CUDA install raises at import
        return False, f"CuPy fails to import: {error}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        return False, f"no usable CUDA device (CUDA runtime: {first_line(error)})"
    if count == 0:
        return False, "no CUDA device"
    nvrtc_ok, nvrtc = nvrtc_status()
    if not nvrtc_ok:
        return False, f"{count} device(s), but {nvrtc}"
    return True, f"{count} device(s), {nvrtc}"


def nvrtc_status() -> tuple[bool, str]:
    """(loadable, what): NVRTC compiles the kernels at run time; CuPy loads it lazily."""
    try:
        from cupy.cuda import nvrtc
        major, minor = nvrtc.getVersion()
    except Exception as error:
        return False, f"NVRTC cannot be loaded ({first_line(error)})"
    return True, f"NVRTC {major}.{minor}"
