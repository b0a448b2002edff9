"""Is there a GPU here? CuPy, the CUDA driver and a device, checked with CuPy alone.

Runnable as a file (``python3 fusedopt/tools/gpucheck/probe.py``), without importing fusedopt or
its dependencies, so ``make gpu-check`` can say "no GPU" on a machine that lacks even
Numba; :mod:`fusedopt.tools.gpucheck` runs the same check first.
"""

from __future__ import annotations

import sys

#: Exit code when there is no GPU to check (nothing was run, no report written).
EXIT_NO_GPU = 3


def gpu_status() -> tuple[bool, str, dict]:
    """(usable, why not / what, device facts)."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed for this Python", {}
    except Exception as error:  # a broken CUDA install raises at import
        return False, f"CuPy fails to import ({type(error).__name__}: {error})", {}
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, or the driver finds no device
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return False, f"CuPy finds no CUDA device ({type(error).__name__}: {first})", {}
    if count == 0:
        return False, "CuPy finds no CUDA device (device count 0)", {}
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    facts = {"devices": count, "name": name,
             "compute_capability": f"{props['major']}.{props['minor']}",
             "memory_bytes": int(props["totalGlobalMem"]),
             "cupy": cupy.__version__,
             "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
             "cuda_driver": cupy.cuda.runtime.driverGetVersion()}
    return True, f"{count} device(s): {name}", facts


def no_gpu_message(why: str) -> str:
    return (f"gpucheck: no GPU to check here: {why}. Nothing was run and no report was "
            f"written (exit code {EXIT_NO_GPU}). Run it on a machine with a CUDA GPU, CuPy, "
            "torch (CUDA), numba and pytest.")


def main() -> int:
    ok, why, _ = gpu_status()
    if not ok:
        print(no_gpu_message(why), file=sys.stderr)
        return EXIT_NO_GPU
    return 0


if __name__ == "__main__":
    sys.exit(main())
