"""The command line end to end at tiny sizes: bench (JSON, PNG), demo, info."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fusedopt import cli
from fusedopt._bench import traffic
from fusedopt._registry import lookup

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _torch_present() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# The bench run compiles Numba loops for two dtypes and two rules; Keras trains once.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "out.json", out / "out.png"
    code = cli.main(["bench", "--sizes", "1024", "--repeats", "2", "--optimizer", "adam",
                     "--json", str(json_path), "--plot", str(png_path)])
    assert code == 0
    return json.loads(json_path.read_text()), png_path


@slow
def test_bench_json_has_every_contender_and_sample(bench_run):
    data, _ = bench_run
    expected = {"fused", "unfused", "ceiling"}
    if _torch_present():
        expected |= {"torch fused", "torch foreach"}
    cases = data["cases"]
    assert {(c["optimizer"], c["dtype"], c["size"]) for c in cases} == {
        ("adam", "float32", 1024), ("adam", "float64", 1024)}
    for case in cases:
        assert expected <= set(case["contenders"]), case["notes"]
        for name, row in case["contenders"].items():
            assert len(row["samples_s"]) == 2, name
            assert all(s > 0 for s in row["samples_s"])
            assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert case["contenders"]["ceiling"]["fraction_of_ceiling"] == pytest.approx(1.0)
        assert case["contenders"]["unfused"]["speedup_vs_unfused"] == pytest.approx(1.0)


@slow
def test_bench_bytes_follow_adam_traffic(bench_run):
    data, _ = bench_run
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
    assert {"numpy", "numba", "cupy", "torch"} <= set(machine["versions"])
    assert machine["numba"]["threads"] >= 1 and machine["numba"]["threading_layer"]


@slow
def test_bench_plot_is_a_png_matplotlib_reads(bench_run):
    import matplotlib.image

    _, png = bench_run
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(png)
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


def test_bench_rejects_unknown_optimizer_and_bad_sizes():
    with pytest.raises(SystemExit, match="unknown optimizer 'adamm'"):
        cli.main(["bench", "--optimizer", "adamm", "--sizes", "1024"])
    with pytest.raises(SystemExit):
        cli.main(["bench", "--sizes", "1k"])
    assert cli._sizes("1024,2^16,2**20") == (1024, 65536, 2**20)


@slow
def test_demo_compare_matches_unfused_and_keras_and_loss_falls():
    from fusedopt._demo import run_demo

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


@slow
def test_cpu_adam_ceiling_script_prints_a_markdown_table(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_adam_ceiling.py"
    spec = importlib.util.spec_from_file_location("cpu_adam_ceiling", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--elements", "65536", "--small-elements", "4096", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:3] for line in out.splitlines() if line.startswith("| ")]
    cells = {(n.strip(), c.strip()) for n, c in rows}
    expected = {"fused", "ceiling", "unfused"} | ({"torch fused"} if _torch_present() else set())
    assert {c for n, c in cells if n == "65,536"} == expected
    assert {c for n, c in cells if n == "4,096"} == expected - {"unfused"}
    assert "n * (16 read + 12 written)" in out


def _cuda_usable() -> bool:
    from fusedopt._info import cuda_status
    return cuda_status()[0]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_usable(), reason="needs a CUDA device and CuPy")
def test_bench_on_gpu_has_ceiling_and_copy(tmp_path):
    out = tmp_path / "gpu.json"
    assert cli.main(["bench", "--backend", "cuda", "--sizes", "4096,65537", "--repeats", "2",
                     "--optimizer", "adam", "--dtype", "float32", "--json", str(out)]) == 0
    for case in json.loads(out.read_text())["cases"]:
        assert {"fused", "unfused", "ceiling", "copy"} <= set(case["contenders"]), case["notes"]
