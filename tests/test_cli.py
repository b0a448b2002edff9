"""The command line end to end at tiny sizes: bench (JSON, markdown, PNGs), demo, info."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fusedopt.algorithms.registry import lookup
from fusedopt.tools import cli
from fusedopt.tools.bench import sweep, traffic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _torch_present() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# The bench run compiles Numba loops for two dtypes and two rules; Keras trains once.
slow = pytest.mark.slow


#: The drift probe's size in these tests (the real one allocates 640 MB).
PROBE_ELEMENTS = 2**16

BENCH_ARGS = ["bench", "--sizes", "1024", "--rounds", "3", "--repeats-of-sweep", "2",
              "--optimizer", "adam"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """The default (isolated) method: every contender in a worker process of its own."""
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"out.{k}" for k in ("json", "png", "md")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sweep.PROBE_SIZE, "cpu", PROBE_ELEMENTS)
        code = cli.main([*BENCH_ARGS, "--json", str(paths["json"]), "--plot", str(paths["png"]),
                         "--markdown", str(paths["md"]), "--roofline", str(out / "roof")])
    assert code == 0
    return json.loads(paths["json"].read_text()), paths["png"], paths["md"], out


@slow
def test_bench_json_has_every_contender_and_sample_of_every_repeat(bench_run):
    data = bench_run[0]
    expected = {"fused", "unfused", "ceiling"}
    if _torch_present():
        expected |= {"torch fused", "torch foreach"}
    cases = data["cases"]
    assert {(c["optimizer"], c["dtype"], c["size"]) for c in cases} == {
        ("adam", "float32", 1024), ("adam", "float64", 1024)}
    assert data["method"] == "isolated" and data["settings"]["repeats_of_sweep"] == 2
    for case in cases:
        assert expected <= set(case["contenders"]), case["notes"]
        assert len(case["calls_per_block"]) == 2 and min(case["calls_per_block"]) >= 1
        for name, row in case["contenders"].items():
            assert [len(r) for r in row["samples_s"]] == [3, 3], name  # 2 repeats x 3 rounds
            assert all(s > 0 for r in row["samples_s"] for s in r)
            assert row["min_s"] <= row["median_s"] <= row["max_s"]
            assert len(row["per_repeat_median_s"]) == 2 and row["spread"] >= 0
            low, high = min(row["per_repeat_median_s"]), max(row["per_repeat_median_s"])
            assert row["spread"] == pytest.approx((high - low) / row["median_s"])
        ceiling = case["contenders"]["ceiling"]["fraction_of_ceiling"]
        assert ceiling["median"] == pytest.approx(1.0) and ceiling["spread"] == 0
        assert case["contenders"]["unfused"]["speedup_vs_unfused"]["median"] == \
            pytest.approx(1.0)


@slow
def test_isolated_workers_import_only_what_their_contender_needs(bench_run):
    processes = bench_run[0]["processes"]
    assert processes["fused"]["torch_imported"] is False
    assert processes["ceiling"]["torch_imported"] is False
    assert processes["unfused"]["torch_imported"] is False
    pids = {p["pid"] for p in processes.values()}
    assert len(pids) == len(processes)  # one process each
    if _torch_present():
        assert processes["torch fused"]["torch_imported"] is True


@slow
def test_bench_measures_the_ceiling_at_start_and_end(bench_run):
    drift = bench_run[0]["drift"]
    assert drift["start_gb_per_s"] > 0 and drift["end_gb_per_s"] > 0
    assert drift["change"] == pytest.approx(
        (drift["end_gb_per_s"] - drift["start_gb_per_s"]) / drift["start_gb_per_s"])
    assert drift["exceeded"] == (abs(drift["change"]) > 0.2)


@slow
def test_bench_markdown_names_method_command_and_spread(bench_run):
    md = bench_run[2].read_text()
    assert "fusedopt bench --sizes 1024 --rounds 3 --repeats-of-sweep 2 --optimizer adam" in md
    assert "Method: isolated: each contender in a worker process of its own" in md
    assert "2 repeat(s) of the sweep x 3 interleaved rounds" in md and "L3" in md
    assert "Ceiling drift" in md and "spread across repeats" in md
    rows = [line for line in md.splitlines() if line.startswith("| adam | float")]
    assert len(rows) == 2 and all(" in L3 | fused | " in r for r in rows)


@slow
def test_bench_same_process_is_labelled(tmp_path):
    path = tmp_path / "same.json"
    assert cli.main(["bench", "--sizes", "1024", "--rounds", "2", "--repeats-of-sweep", "1",
                     "--optimizer", "sgd", "--dtype", "float32", "--same-process",
                     "--no-torch", "--no-probe", "--calls-per-block", "3",
                     "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["method"] == "same-process" and data["drift"] is None
    assert list(data["processes"]) == ["this process"]
    (case,) = data["cases"]
    assert case["method"] == "same-process" and case["calls_per_block"] == [3]
    assert set(case["contenders"]) == {"fused", "unfused", "ceiling"}


@slow
def test_bench_bytes_follow_adam_traffic(bench_run):
    data = bench_run[0]
    # Adam reads param, grad, m, v and writes param, m, v (REFERENCE.md: 28 bytes in fp32).
    for case in data["cases"]:
        item = np.dtype(case["dtype"]).itemsize
        assert case["bytes_per_step"] == 1024 * (4 * item + 3 * item)
        fused = case["contenders"]["fused"]
        assert fused["gb_per_s"] == pytest.approx(case["bytes_per_step"] / fused["median_s"] / 1e9)


@slow
def test_bench_json_describes_the_machine(bench_run):
    machine = bench_run[0]["machine"]
    assert machine["cpu_cores"] >= 1 and machine["cpu_model"]
    assert machine["l3_cache_source"] and "load_average" in machine
    assert {"numpy", "numba", "cupy", "torch"} <= set(machine["versions"])
    assert machine["numba"]["threads"] >= 1 and machine["numba"]["threading_layer"]


@slow
def test_bench_plots_are_pngs_matplotlib_reads(bench_run):
    import matplotlib.image

    png, out = bench_run[1], bench_run[3]
    roofs = sorted(p.name for p in out.glob("roof-*.png"))
    assert roofs == ["roof-adam.png"]  # one per family present: adam's
    for path in (png, out / "roof-adam.png"):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.parametrize("amsgrad, read, write", [(False, 16, 12), (True, 20, 16)])
def test_traffic_formula_counts_every_slot(amsgrad, read, write):
    spec = lookup("adam")
    flags = spec.flags({**spec.defaults(), "amsgrad": amsgrad}, "keras")
    flow = traffic.traffic(spec, flags, "float32")
    assert (flow.read_bytes, flow.write_bytes) == (read, write)
    assert flow.total(10) == 10 * (read + write)


@pytest.mark.parametrize("n_slots", [0, 1, 2, 3])
def test_cpu_ceiling_reads_and_writes_param_and_every_slot(n_slots):
    n = 70_001  # more than one CPU chunk, with a tail
    rng = np.random.default_rng(n_slots)
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    slots = [rng.standard_normal(n) for _ in range(n_slots)]
    before = [p.copy()] + [s.copy() for s in slots]
    traffic.cpu_ceiling(p, g, slots, scale=0.5)()
    for after, old in zip([p, *slots], before):
        np.testing.assert_allclose(after, old + 0.5 * g)


def test_bench_quick_settings_use_registered_optimizers_only():
    settings = cli.bench_settings(cli._parser().parse_args(["bench", "--quick"]))
    assert settings.optimizers and "adam" in settings.optimizers
    assert all(lookup(o) for o in settings.optimizers)
    assert settings.sizes and max(settings.sizes) <= 2**20 and settings.dtypes == ("float32",)


def test_bench_rejects_unknown_optimizer_contender_and_bad_sizes():
    with pytest.raises(SystemExit, match="unknown optimizer 'adamm'"):
        cli.main(["bench", "--optimizer", "adamm", "--sizes", "1024"])
    with pytest.raises(SystemExit, match="--contenders: 'torch' is not one of"):
        cli.main(["bench", "--contenders", "fused,torch", "--sizes", "1024"])
    with pytest.raises(SystemExit):
        cli.main(["bench", "--sizes", "1k"])
    assert cli._sizes("1024,2^16,2**20") == (1024, 65536, 2**20)


@slow
def test_demo_compare_matches_unfused_and_keras_and_loss_falls():
    from fusedopt.tools.demo import run_demo

    result = run_demo("adam", compare=True)
    assert result.loss_after < result.loss_before - 0.1
    assert result.max_diff["unfused"] < 1e-5
    try:
        import keras  # noqa: F401
    except ImportError:
        assert "keras" not in result.max_diff
    else:
        assert result.max_diff["keras"] < 1e-5
    changed = np.abs(result.weights_after[0] - result.weights_before[0]).max()
    assert changed > 1e-3  # training moved the first layer


def test_numpy_demo_prints_summary_config_and_epoch_lines(capsys):
    assert cli.main(["demo", "--numpy", "--epochs", "3", "--optimizer", "adamw"]) == 0
    out = capsys.readouterr().out
    assert "132" in out  # 10*10+10 + 10*2+2 params
    assert "weight_decay: 0.004" in out
    lines = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert all(" - loss: " in line and " - accuracy: " in line for line in lines)


def test_info_runs(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backend cuda" in out and "numba threads" in out and "kernel sources" in out


@slow
def test_python_dash_m_runs_info():
    done = subprocess.run([sys.executable, "-m", "fusedopt", "info"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fusedopt" in done.stdout


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@slow
def test_cpu_adam_ceiling_script_prints_each_method_labelled(capsys, monkeypatch):
    monkeypatch.setitem(sweep.PROBE_SIZE, "cpu", PROBE_ELEMENTS)
    script = _load_script("cpu_adam_ceiling")
    assert script.main(["--elements", "65536", "--small-elements", "4096", "--rounds", "2",
                        "--repeats-of-sweep", "2"]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| elements")]
    cells = {(n, method, c) for n, method, _, c, *_ in rows}
    torch = {"torch fused"} if _torch_present() else set()
    for method in ("isolated", "same process"):
        assert {c for n, m, c in cells if n == "65,536" and m == method} == \
            {"fused", "ceiling", "unfused"} | torch
    for method in ("isolated, blocks", "isolated, single calls"):
        assert {c for n, m, c in cells if n == "4,096" and m == method} == {"fused", "ceiling"} | torch
    assert {r[2] for r in rows if r[1] == "isolated, single calls"} == {"1"}
    assert "n * (16 read + 12 written)" in out and "Ceiling drift" in out


@slow
def test_multitensor_script_labels_its_method(capsys):
    script = _load_script("bench_multitensor")
    assert script.main(["--scale", "0.0005", "--rounds", "2", "--repeats-of-sweep", "2"]) == 0
    out = capsys.readouterr().out
    assert "Method: isolated (each contender in a worker process of its own); 2 repeats" in out
    for name in ("fusedopt list", "fusedopt one buffer", "FlatParams"):
        assert out.count(f"| {name} | ") == 2
    assert out.count("| fusedopt list | ") == 2 and "| 1.00 |" in out


def _cuda_usable() -> bool:
    from fusedopt.tools.info import cuda_status
    return cuda_status()[0]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_usable(), reason="needs a CUDA device and CuPy")
def test_bench_on_gpu_has_ceiling_and_copy(tmp_path):
    pytest.importorskip("rich", reason="the command line prints with rich")
    out = tmp_path / "gpu.json"
    assert cli.main(["bench", "--backend", "cuda", "--sizes", "4096,65537", "--rounds", "2",
                     "--repeats-of-sweep", "1", "--optimizer", "adam", "--dtype", "float32",
                     "--json", str(out)]) == 0
    for case in json.loads(out.read_text())["cases"]:
        assert {"fused", "unfused", "ceiling", "copy"} <= set(case["contenders"]), case["notes"]
