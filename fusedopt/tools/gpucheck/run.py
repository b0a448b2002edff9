"""The ``gpucheck`` run: probe, phases within the budget, report."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from importlib import metadata

from . import bench, gputests, report
from .budget import Budget
from .probe import EXIT_NO_GPU, gpu_status, no_gpu_message

#: The whole run, in seconds: 7.5 minutes, leaving 30 s of the 8 for interpreter start,
#: imports and CUDA context creation before the clock starts and the report after.
TOTAL_S = 450
#: (phase, seconds the phases before it must leave it, most seconds it may take).
PLAN = (
    ("single", 20, 100),
    ("multitensor", 10, 40),
    ("family", 10, 30),
    ("tests", 280, 330),
    ("report", 5, 5),
)
ESTIMATE = (
    "Budget estimate: the benchmark phases time at most about 20 cases of 4 contenders at "
    "7 samples of >= 2 ms after 3 warm-up calls (about 0.1 s of device time each; the 2^28 "
    "float32 Adam step moves 7.5 GB, about 2 ms at H200-class bandwidth), so allocation, "
    "NVRTC compilation (all 10 families compile in 6.5 s for sm_90 on the development "
    "machine) and torch's start dominate; their slices (100 + 40 + 30 s) are caps. The "
    "tests' cost is the CPU side of 148 GPU-vs-CPU-vs-reference comparisons: 301 s on the "
    "2-core development machine with cold Numba and kernel caches, single-threaded per "
    "variant, so up to 8 shards in parallel bring it to about 40-80 s on a many-core host; "
    "they get at least 280 s. A watchdog stops the run at the budget and writes what it has."
)


class BudgetExceeded(BaseException):
    """Raised by the watchdog; a BaseException, so no phase's ``except Exception`` (which
    records an error and carries on) can swallow it."""


def _alarm(signum, frame):
    raise BudgetExceeded(f"the {TOTAL_S} s budget ran out")


def _versions() -> dict:
    out = {}
    for name in ("fusedopt", "numpy", "numba", "cupy", "torch", "pytest", "ml_dtypes"):
        try:
            if name == "fusedopt":
                from ... import __version__ as v
            elif name == "cupy":
                import cupy
                v = cupy.__version__
            else:
                v = metadata.version(name)
        except Exception:
            v = None
        out[name] = v
    return out


def _torch_cuda() -> tuple[bool, str]:
    try:
        import torch
    except Exception as error:
        return False, f"torch does not import ({type(error).__name__}: {error})"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device (a CPU-only build?)"
    return True, f"torch {torch.__version__}, CUDA {torch.version.cuda}"


def _phase(data: dict, budget: Budget, name: str, work):
    phase = budget.phase(name)
    entry = data["phases"].setdefault(name, {})
    try:
        return work(phase)
    except BudgetExceeded:
        raise
    except Exception as error:
        entry["error"] = f"{type(error).__name__}: {error}"
        entry["traceback"] = traceback.format_exc(limit=8)
        return None
    finally:
        entry["wall_s"] = phase.elapsed()
        entry["skipped"] = phase.skipped


def run(data: dict, budget: Budget) -> None:
    torch_ok, torch_why = _torch_cuda()
    data["torch"] = torch_why
    if not torch_ok:
        data["phases"]["setup"] = {"error": f"torch contenders left out: {torch_why}",
                                   "wall_s": 0, "skipped": []}
    clock = budget.clock
    data["single"] = _phase(data, budget, "single",
                            lambda p: bench.single_tensors(p, torch_ok, clock))
    data["multitensor"] = _phase(data, budget, "multitensor",
                                 lambda p: bench.multi_tensor(p, torch_ok))
    data["family"] = _phase(data, budget, "family", bench.family)
    data["tests"] = _phase(data, budget, "tests", gputests.run)


def main(argv=None) -> int:
    ok, why, device = gpu_status()
    if not ok:
        print(no_gpu_message(why), file=sys.stderr)
        return EXIT_NO_GPU
    folder = os.environ.get("GPU_REPORT_DIR", "gpu-report")
    budget = Budget(TOTAL_S, PLAN)
    data = {"device": device, "versions": _versions(), "phases": {},
            "budget": {"total_s": TOTAL_S, "plan": PLAN, "estimate": ESTIMATE},
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"gpucheck: {why}; budget {TOTAL_S} s; report into {folder}/", flush=True)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TOTAL_S + 5)
    try:
        run(data, budget)
    except BudgetExceeded as error:
        data["phases"].setdefault("watchdog", {"wall_s": 0, "skipped": []})["error"] = str(error)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    data["wall_s"] = time.monotonic() - budget.start
    md, js = report.write(data, folder)
    failed = [n for n, p in data["phases"].items() if p.get("error")]
    tests_ok = bool(data.get("tests") and data["tests"].get("ok"))
    print(f"gpucheck: wrote {md} and {js} in {data['wall_s']:.0f} s; tests "
          f"{'passed' if tests_ok else 'NOT passed'}"
          + (f"; errors in: {', '.join(failed)}" if failed else ""), flush=True)
    return 0 if tests_ok and not failed else 1
