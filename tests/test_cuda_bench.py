"""benchmarks/bench_gpu.py and fusedopt.tools.gpucheck's steps without a GPU: the bytes formula,
the steps themselves on the host runtime, and a clean refusal."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fusedopt.algorithms.registry import REGISTRY
from fusedopt.tools.gpucheck import EXIT_NO_GPU, steps
from fusedopt.tools.gpucheck.counting import fusedopt_launches

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device_count() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def test_fp32_adam_moves_28_bytes_an_element():
    """The figure REFERENCE.md gives: read p, g, m, v (16) and write p, m, v (12)."""
    assert steps.step_bytes("adam", [10], "float32") == 280
    assert steps.step_bytes("adamw", [10, 5], "float32") == 28 * 15
    assert steps.step_bytes("sgd", [1], "float64") == 8 * 3  # no momentum: p, g read, p written


def test_without_a_device_it_says_so(script, capsys):
    if _device_count():
        pytest.skip("a GPU is present: the script would run")
    assert script.main(["--sizes", "16"]) == EXIT_NO_GPU
    assert "needs CuPy and a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("backend, launches", [("cuda", 1), ("unfused", 0)])
def test_steps_it_times_run_on_the_host(host_cuda, backend, launches):
    """The fused and unfused steps gpucheck times, with NumPy standing in for CuPy and the
    host runtime for the device (tiny sizes: this checks the code path, not speed). Two
    tensors, one launch: the counter agrees with the launches the host runtime saw."""
    params, grads = steps.arrays([1000, 3001], "float32", np)
    before = [p.copy() for p in params]
    step = steps.fusedopt_step("adam", params, grads, backend)
    step()
    seen = len(host_cuda.launches)
    assert fusedopt_launches(step) == launches
    assert len(host_cuda.launches) - seen == launches
    assert all(not np.array_equal(a, b) for a, b in zip(params, before))


def test_counting_runtime_leaves_the_runtime_as_it_was(host_cuda):
    from fusedopt.backends.cuda import runtime

    params, grads = steps.arrays([70_000], "float32", np)
    step = steps.fusedopt_step("adamw", params, grads, "cuda")
    assert fusedopt_launches(step) == 1
    assert runtime.current() is host_cuda


def test_arrays_repeat_a_random_block_exactly_to_size():
    params, grads = steps.arrays([3, 70_000], "float32", np)
    assert [p.size for p in params] == [3, 70_000] and params[1].dtype == np.float32
    assert params[1].flags.c_contiguous and np.array_equal(params[1][:3], params[0])
    assert np.abs(grads[1]).max() < np.abs(params[1]).max()


def test_bench_dtypes_come_from_the_registry(monkeypatch):
    """float32 today; a 16-bit type appears as soon as the registry declares it, and
    8-byte types stay out."""
    import dataclasses

    assert steps.bench_dtypes() == tuple(d for d in REGISTRY["adam"].dtypes if d != "float64")
    pytest.importorskip("ml_dtypes")
    wider = dataclasses.replace(REGISTRY["adam"], dtypes=("float32", "float64", "bfloat16"))
    monkeypatch.setitem(REGISTRY, "adam", wider)
    assert steps.bench_dtypes() == ("float32", "bfloat16")
