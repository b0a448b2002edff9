"""benchmarks/bench_gpu.py without a GPU: its bytes formula, and a clean refusal."""

import importlib.util
import sys
from pathlib import Path

import pytest

from fusedopt._registry import REGISTRY

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_gpu"]


def test_fp32_adam_moves_28_bytes_an_element(bench):
    """The figure REFERENCE.md gives: read p, g, m, v (16) and write p, m, v (12)."""
    adam = REGISTRY["adam"]
    moved = bench.traffic(adam, adam.flags(adam.defaults(), "keras"), "float32")
    assert (moved.read_bytes, moved.write_bytes, moved.total(10)) == (16, 12, 280)
    amsgrad = adam.flags(dict(adam.defaults(), amsgrad=True), "keras")
    assert bench.traffic(adam, amsgrad, "float64").total(1) == 8 * (2 + 3) + 8 * (1 + 3)


def test_without_a_device_it_says_so(bench, capsys):
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount():
            pytest.skip("a GPU is present: the script would run")
    except Exception:
        pass
    assert bench.main(["--sizes", "16"]) == 2
    assert "needs CuPy and a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["cuda", "unfused"])
def test_steps_it_times_run_on_the_host(bench, host_cuda, backend):
    """The fused and unfused steps the script times, with NumPy standing in for CuPy and the
    host runtime for the device (tiny size: this checks the code path, not speed)."""
    import numpy as np
    step, moved = bench.optimizer_step("adam", 1000, "float32", backend, np)
    step()
    step()
    assert moved.total(1000) == 28_000
    assert len(host_cuda.launches) == (2 if backend == "cuda" else 0)
