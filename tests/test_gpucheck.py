"""fusedopt.tools.gpucheck without a GPU: its no-GPU exit, its report writer, its budget, its
test sharding and its phases' bookkeeping (the GPU work itself is unverified here)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusedopt.tools.gpucheck import EXIT_NO_GPU, bench, gputests, report, run
from fusedopt.tools.gpucheck.budget import Budget

ROOT = Path(__file__).resolve().parents[1]


def _device_count() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


no_gpu_here = pytest.mark.skipif(_device_count() > 0, reason="a GPU is present")


@no_gpu_here
def test_without_a_gpu_it_exits_at_once_with_its_own_code(tmp_path):
    out = tmp_path / "report"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fusedopt.tools.gpucheck"], cwd=ROOT,
                          env={**os.environ, "GPU_REPORT_DIR": str(out)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == EXIT_NO_GPU == 3, done.stderr
    assert "no GPU to check here" in done.stderr and "CuPy" in done.stderr
    assert not out.exists()  # nothing run, nothing written
    assert time.monotonic() - started < 60


@no_gpu_here
def test_the_probe_runs_as_a_file_without_importing_fusedopt():
    """What `make gpu-check` runs first: it must answer on a python without Numba."""
    code = ("import runpy, sys\n"
            "try:\n    runpy.run_path('fusedopt/tools/gpucheck/probe.py', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print(code, 'fusedopt' in sys.modules, 'numba' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["3", "False", "False"], done.stderr
    assert "no GPU to check here" in done.stderr


def test_make_target_uses_the_python_on_path_with_the_checkout_on_pythonpath():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("python3 fusedopt/tools/gpucheck/probe.py")
    assert "PYTHONPATH=" in lines[1] and "python3 -m fusedopt.tools.gpucheck" in lines[1]
    assert ".venv" not in done.stdout and "pip" not in done.stdout


def _synthetic() -> dict:
    """What a run on a GPU would hand the writer: two phases measured, one failed, a size
    skipped, two test shards (one failing)."""
    def row(median, gbs, copy, own=None, device=None):
        out = {"median_s": median, "samples_s": [median] * 7, "gb_per_s": gbs,
               "fraction_of_copy": copy, "calls_per_sample": 20}
        if own is not None:
            out["launches_fusedopt"] = own
        if device is not None:
            out["launches_device"] = device
        return out

    single = [{"optimizer": "adam", "dtype": "float32", "case": "2^20", "elements": 2**20,
               "tensors": 1, "bytes_per_step": 28 * 2**20, "contenders": {
                   "fused": row(12.5e-6, 2348.8, 0.91, 1, {"kernels": 1, "copies": 0}),
                   "unfused": row(80e-6, 367.0, 0.14, 0, {"kernels": 11, "copies": 0}),
                   "torch fused": {"error": "RuntimeError: no fused kernel"},
                   "copy": row(11.4e-6, 2575.4, 1.0, None, {"kernels": 0, "copies": 1})}},
              {"optimizer": "adamw", "dtype": "float32", "case": "2^28", "elements": 2**28,
               "tensors": 1, "bytes_per_step": 28 * 2**28, "skipped": "needs about 30 GiB"}]
    shard = {"tests": 3, "returncode": 0, "timed_out": False,
             "summary": {"passed": 3}, "output": "...\n3 passed in 4.2s"}
    failing = {"tests": 2, "returncode": 1, "timed_out": False,
               "summary": {"passed": 1, "failed": 1}, "output": "F.\n1 failed, 1 passed in 9s"}
    return {
        "device": {"name": "Test GPU", "compute_capability": "9.0", "memory_bytes": 80 * 2**30,
                   "cupy": "14.0", "cuda_runtime": 13000, "cuda_driver": 13000},
        "versions": {"fusedopt": "0.1.0", "torch": "2.13.0"},
        "budget": {"total_s": 450, "estimate": "Budget estimate: synthetic."},
        "phases": {"single": {"wall_s": 31.0, "skipped": ["adam float32 2^28 (estimated 90 s, "
                                                          "12 s left in the phase)"]},
                   "multitensor": {"wall_s": 2.0, "skipped": [],
                                   "error": "ValueError: synthetic failure"},
                   "tests": {"wall_s": 70.0, "skipped": []}},
        "single": single, "multitensor": None, "family": [],
        "tests": {"command": "-m pytest -q -m gpu tests/test_gpu.py", "collected": 5,
                  "shards": [shard, failing], "totals": {"passed": 4, "failed": 1},
                  "ok": False, "wall_s": 70.0},
        "wall_s": 104.0,
    }


def test_report_writer_shows_every_figure_skip_and_error(tmp_path):
    data = _synthetic()
    md_path, json_path = report.write(data, tmp_path / "r")
    md = md_path.read_text()
    assert "Device: Test GPU (compute capability 9.0, 80 GiB)" in md
    assert "Wall time 104 s of a 450 s budget. Budget estimate: synthetic." in md
    assert "| single | 31 | adam float32 2^28 (estimated 90 s, 12 s left in the phase) | - |" in md
    assert "| multitensor | 2 | - | ValueError: synthetic failure |" in md
    assert "**NOT PASSED** (1 failed, 4 passed)" in md and "1 failed, 1 passed in 9s" in md
    assert ("| adam | float32 | 2^20 | fused | 12.5 | 2348.8 | 91% | "
            "1 (fusedopt); 1 kernels + 0 copies (CUPTI) |") in md
    assert "| adam | float32 | 2^20 | unfused | 80.0 | 367.0 | 14% | 0 (fusedopt); 11 kernels" in md
    assert "| torch fused | ERROR: RuntimeError: no fused kernel |" in md
    assert "| adamw | float32 | 2^28 | needs about 30 GiB |" in md
    assert "## The 200-tensor mix (one step over every tensor)\n\nNot run." in md
    assert json.loads(json_path.read_text()) == data


def test_budget_gives_each_phase_what_later_phases_leave_and_its_cap():
    now = [0.0]
    budget = Budget(100, [("a", 0, 30), ("b", 20, 50), ("c", 40, 100)], clock=lambda: now[0])
    a = budget.phase("a")
    assert a.deadline == 30  # its cap, well before 100 - 60 reserved
    now[0] = 10.0
    b = budget.phase("b")
    assert b.deadline == 60  # 100 minus c's 40
    assert b.allows(49) and not b.allows(51)
    b.skip("size 2^28", 90)
    assert b.skipped == ["size 2^28 (estimated 90 s, 50 s left in the phase)"]
    now[0] = 95.0
    c = budget.phase("c")
    assert c.deadline == 100 and c.left() == 5


def test_size_sweep_stops_when_the_next_size_would_not_fit(monkeypatch):
    now = [0.0]

    def fake_case(optimizer, sizes, dtype, torch_ok, label, only=None):
        now[0] += sizes[0] / 2**20  # one second per 2^20 elements
        return {"optimizer": optimizer, "case": label}

    monkeypatch.setattr(bench, "case", fake_case)
    monkeypatch.setattr(bench.steps, "bench_dtypes", lambda: ("float32",))
    budget = Budget(60, [("single", 0, 60)], clock=lambda: now[0])
    phase = budget.phase("single")
    done = bench.single_tensors(phase, True, lambda: now[0])
    assert [c["case"] for c in done] == ["2^20", "2^20", "2^22", "2^22", "2^24", "2^24"]
    assert [s.split(" (")[0] for s in phase.skipped] == [
        "adam float32 2^26", "adamw float32 2^26", "adam float32 2^28", "adamw float32 2^28"]


def test_a_failing_phase_is_recorded_and_the_rest_still_run(monkeypatch):
    def broken(*args):
        raise RuntimeError("synthetic")

    monkeypatch.setattr(run, "_torch_cuda", lambda: (False, "no torch here"))
    monkeypatch.setattr(run.bench, "single_tensors", broken)
    monkeypatch.setattr(run.bench, "multi_tensor", lambda phase, torch_ok: [{"case": "m"}])
    monkeypatch.setattr(run.bench, "family", lambda phase: [{"case": "f"}])
    monkeypatch.setattr(run.gputests, "run", lambda phase: {"ok": True})
    data = {"phases": {}}
    run.run(data, Budget(run.TOTAL_S, run.PLAN))
    assert data["phases"]["single"]["error"] == "RuntimeError: synthetic"
    assert data["single"] is None and data["multitensor"] == [{"case": "m"}]
    assert data["tests"] == {"ok": True} and "torch contenders left out" in \
        data["phases"]["setup"]["error"]


def test_gpu_tests_are_found_and_sharded_by_optimizer():
    files = gputests.gpu_test_files()
    assert "tests/test_gpu.py" in files and "tests/test_cli.py" in files
    assert "tests/test_gpucheck.py" not in files  # no gpu mark here
    nodes = [f"tests/test_gpu.py::t[{name}-float32-{i}]" for name in ("adam", "sgd", "lion")
             for i in range(4 if name == "adam" else 2)] + ["tests/test_cli.py::test_gpu"]
    parts = gputests.shards(nodes, 2)
    assert sorted(n for p in parts for n in p) == sorted(nodes)
    for name in ("adam", "sgd", "lion"):  # one optimizer's compiles stay in one process
        assert sum(any(f"[{name}" in n for n in p) for p in parts) == 1
    assert sorted(map(len, parts)) == [4, 5]  # balanced: sgd and lion beside adam's four


def test_pytest_summary_is_parsed_from_its_last_line():
    assert gputests.summary("x\n== 12 passed, 2 skipped in 3.1s ==\n") == {
        "passed": 12, "skipped": 2}
    assert gputests.summary("1 failed, 3 passed, 1 error in 2s") == {
        "failed": 1, "passed": 3, "errors": 1}
    assert gputests.summary("killed") == {}


@no_gpu_here
@pytest.mark.slow
def test_the_test_phase_runs_its_shards_end_to_end_here():
    """Collected, sharded and run for real; without a GPU every gpu test skips."""
    phase = Budget(300, [("tests", 0, 300)]).phase("tests")
    out = gputests.run(phase)
    assert out["collected"] > 100 and out["ok"], [s["output"][-2000:] for s in out["shards"]]
    assert out["totals"].get("skipped") == out["collected"]
    assert not out["totals"].get("failed") and not phase.skipped


def test_the_watchdog_is_not_swallowed_by_a_phase_that_records_errors(monkeypatch):
    """Phases catch Exception to record it and carry on; the budget's end must get past."""
    def overrun(phase, torch_ok, clock):
        try:
            raise run.BudgetExceeded("the budget ran out")
        except Exception:  # what bench.case does with a contender's error
            return [{"error": "swallowed"}]

    monkeypatch.setattr(run, "_torch_cuda", lambda: (True, "torch"))
    monkeypatch.setattr(run.bench, "single_tensors", overrun)
    with pytest.raises(run.BudgetExceeded):
        run.run({"phases": {}}, Budget(run.TOTAL_S, run.PLAN))
