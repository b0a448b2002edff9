"""``fusedopt info``: versions, which backends can run here and why not, caches."""

from __future__ import annotations

import os
from pathlib import Path

from .bench.machine import cuda_status, nvrtc_status


def numba_cache() -> str:
    from ..backends.cpu._cache import JIT_OPTIONS

    if not JIT_OPTIONS["cache"]:
        return "off (no writable cache folder)"
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    beside = Path(__file__).resolve().parents[1] / "backends" / "cpu" / "__pycache__"
    if os.access(beside.parent, os.W_OK):
        return str(beside)
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "numba")


def cupy_cache() -> str:
    return os.environ.get("CUPY_CACHE_DIR", str(Path.home() / ".cupy" / "kernel_cache"))


def cpu_step_threads() -> str:
    """How a CPU step picks its threads and how idle ones wait (fusedopt/backends/cpu/threads.py)."""
    import os

    from .. import config
    count = (f"{config.CPU_THREADS} (config.CPU_THREADS)" if config.CPU_THREADS else
             "torch's for fusedopt.torch, else Numba's")
    wait = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
            if k in os.environ}
    waits = ", ".join(f"{k}={v}" for k, v in wait.items()) or "the runtime's default"
    return (f"{count}; calling thread alone below {config.CPU_SERIAL_BELOW:,} elements; "
            f"idle threads: {waits}")


def collect() -> dict:
    """Everything ``fusedopt info`` prints, as a dict (also used by tests)."""
    from ..algorithms.registry import REGISTRY
    from ..backends.cuda.source import kernel_dir
    from .bench.machine import describe, version

    ok, why = cuda_status()
    machine = describe()
    machine["versions"].update({p: version(p) for p in ("keras", "rich", "matplotlib")})
    return {
        **machine,
        "backends": {
            "cpu": "available (Numba)",
            "unfused": "available (NumPy; CuPy arrays too when CUDA is available)",
            "cuda": ("available: " if ok else "unavailable: ") + why,
        },
        "nvrtc": nvrtc_status()[1],
        "optimizers": sorted(REGISTRY),
        "kernel_dir": str(kernel_dir()),
        "numba_cache": numba_cache(),
        "cpu_step_threads": cpu_step_threads(),
        "cupy_cache": cupy_cache(),
    }


def show(console) -> dict:
    from rich.table import Table

    info = collect()
    table = Table(title="fusedopt info", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, v in info["versions"].items():
        table.add_row(name, v or "not installed")
    table.add_row("python", info["python"])
    for name, status in info["backends"].items():
        table.add_row(f"backend {name}", status)
    table.add_row("nvrtc", info["nvrtc"])
    table.add_row("optimizers", ", ".join(info["optimizers"]))
    numba = info["numba"]
    table.add_row("numba threads", f"{numba['threads']} ({numba['threading_layer']} layer, "
                                    f"requested {numba['requested_layer']})")
    if "torch_threads" in info:
        table.add_row("torch threads", str(info["torch_threads"]))
    table.add_row("cpu step threads", info["cpu_step_threads"])
    table.add_row("cpu", f"{info['cpu_model']} ({info['cpu_cores']} logical cores)")
    table.add_row("gpu", info["gpu"] or "none")
    table.add_row("kernel sources", info["kernel_dir"])
    table.add_row("numba cache", info["numba_cache"])
    table.add_row("cupy cache", info["cupy_cache"])
    console.print(table)
    return info
