"""The benchmark's method, without timing anything that matters: spreads across repeats and
their marks, the drift check, the L3 size, working sets, worker isolation and failure, the
ceiling's loop, and the scripts that regenerate benchmarks/RESULTS.md."""

import gc
import importlib.util
import inspect
import weakref
from pathlib import Path

import numpy as np
import pytest

from fusedopt.tools.bench import contenders as cs
from fusedopt.tools.bench import isolated, machine, markdown, report, results, sweep, traffic
from fusedopt.tools.bench.results import Figure, Result, Run

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(fused_medians, ceiling_medians, size=2**20) -> Result:
    """A case whose repeats had these medians (each repeat: three equal blocks)."""
    flow = traffic.Traffic(16, 12)
    runs = [Run(3, {cs.FUSED: [f] * 3, cs.CEILING: [c] * 3})
            for f, c in zip(fused_medians, ceiling_medians)]
    return Result("adam", size, "float32", "cpu", flow, runs=runs,
                  contender_bytes=size * 16, working_set=size * 32)


def test_figure_is_the_median_across_repeats_with_its_spread():
    f = Figure.of([1.0, 1.1, 1.3])
    assert f.median == 1.1 and f.spread == pytest.approx(0.3 / 1.1) and f.unsettled
    assert not Figure.of([1.0, 1.05, 1.1]).unsettled  # 10% <= 15%
    assert Figure.of([2.0]).spread is None and not Figure.of([2.0]).unsettled


def test_ratios_are_taken_within_each_repeat():
    """A slow repeat slows both contenders: the within-repeat ratio stays put."""
    r = _result([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
    assert r.time(cs.FUSED).unsettled  # 100% spread in time
    share = r.fraction_of_ceiling(cs.FUSED)
    assert share.median == 1.0 and share.spread == 0.0 and not share.unsettled


def test_tables_mark_unsettled_figures_and_explain_the_mark():
    settled = _result([1e-3, 1.01e-3, 1.02e-3], [1e-3, 1e-3, 1e-3])
    noisy = _result([1e-3, 1.5e-3, 1e-3], [1e-3, 1e-3, 1.01e-3], size=2**22)
    rows = report.markdown_table([settled, noisy], l3=2**25)
    fused = [r for r in rows if "| fused |" in r]
    assert "~" not in fused[0] and "| 1.01 ms | 2% |" in fused[0]
    assert "| 1 ms~ | 50% |" in fused[1] and "| 100%~ |" in fused[1]  # time and share marked
    assert "| 2^22 | 3 | 64M > L3 |" in fused[1] and "| 2^20 | 3 | 16M in L3 |" in fused[0]
    assert "~ = spread across repeats of the sweep above 15%" in report.LEGEND


def test_drift_above_20_percent_is_reported_in_text_and_json():
    settings = sweep.Settings(("adam",), (1024,), ("float32",), "cpu")
    outcome = sweep.Outcome(settings, [], sweep.Drift("probe", 40.0, 30.0))
    assert outcome.drift.change == -0.25 and outcome.drift.exceeded
    assert "(-25%): DRIFT ABOVE 20%" in report.drift_line(outcome)
    data = report.to_dict(outcome, {})
    assert data["drift"]["exceeded"] is True and data["drift"]["change"] == -0.25
    calm = sweep.Outcome(settings, [], sweep.Drift("probe", 40.0, 44.0))
    assert "within 20%" in report.drift_line(calm) and not calm.drift.exceeded


def test_l3_size_is_read_from_sysfs(tmp_path):
    for i, (level, size) in enumerate([("1", "48K"), ("2", "2048K"), ("3", "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "size").write_text(size + "\n")
    assert machine.l3_cache(tmp_path) == (32 * 2**20, str(tmp_path / "index2" / "size"))
    assert machine._size("480 MiB") == 480 * 2**20 and machine._size("huge") is None


def test_working_set_counts_what_each_method_allocates():
    n, item = 2**20, 4
    names = (cs.FUSED, cs.UNFUSED, cs.TORCH_FUSED, cs.TORCH_FOREACH, cs.CEILING)
    one = cs.contender_bytes(cs.FUSED, "adam", n, "float32")
    assert one == n * item * 4  # param, grad, m, v
    assert cs.working_set("adam", n, "float32", names, isolated=True) == 5 * one
    # one process: param and grad shared, the ceiling reuses the fused step's m and v
    assert cs.working_set("adam", n, "float32", names, isolated=False) == n * item * (2 + 4 * 2)


def test_a_fused_worker_never_imports_torch():
    with isolated.Pool() as pool:
        notes = []
        built = pool.build(isolated.SWEEP_BUILDER, {
            cs.FUSED: dict(contender=cs.FUSED, optimizer="sgd", size=4096, dtype="float32",
                           backend="cpu")}, notes)
        assert [c.name for c, _ in built] == [cs.FUSED] and notes == []
        assert built[0][0].time(5) > 0
        described = pool.describe()[cs.FUSED]
    assert described["torch_imported"] is False and described["numba"]["threads"] >= 1


def test_a_worker_that_fails_or_dies_becomes_a_note_and_is_replaced(tmp_path):
    notes = []
    with isolated.Pool() as pool:
        assert pool.build(isolated.SWEEP_BUILDER, {
            "bad": dict(contender="nonsense", optimizer="adam", size=8, dtype="float32",
                        backend="cpu")}, notes) == []
        assert "bad: failed to build or warm up" in notes[0] and "unknown contender" in notes[0]
        assert pool.build("os:_exit", {"x": {"status": 9}}, notes) == []
        assert "worker 'x' died" in notes[-1] and "x" not in pool.workers
        assert pool.build(isolated.SWEEP_BUILDER, {"x": dict(
            contender=cs.CEILING, optimizer="adam", size=8, dtype="float32",
            backend="cpu")}, notes)  # a fresh worker under the same name


def test_cpu_ceiling_keeps_its_arrays_alive_and_takes_the_backends_loop(monkeypatch):
    import numba

    from fusedopt import config
    from fusedopt.backends.cpu.loop import run, run_serial

    pool = run if numba.get_num_threads() > 1 else run_serial
    cases = [(config.CPU_CHUNK, run_serial, 0), (config.CPU_CHUNK + 1, run_serial, 1 << 30),
             (config.CPU_CHUNK + 1, pool, 0)]  # one item; few elements; the pool's size
    for n, loop, serial_below in cases:
        monkeypatch.setattr(config, "CPU_SERIAL_BELOW", serial_below)
        p, g = np.zeros(n, np.float32), np.ones(n, np.float32)
        step = traffic.cpu_ceiling(p, g, [np.zeros_like(p)], scale=0.5)
        alive = weakref.ref(g)
        del g
        gc.collect()
        assert alive() is not None  # the table points at it
        step()
        assert p[-1] == 0.5
        assert inspect.getclosurevars(step).nonlocals["loop"] is loop


def test_regenerate_replaces_only_its_marked_blocks():
    regenerate = _script("regenerate")
    doc = ("intro\n<!-- regenerate:a -->\nold a\n<!-- /regenerate:a -->\nprose\n"
           "<!-- regenerate:b -->\nold b\n<!-- /regenerate:b -->\n")
    new = regenerate.replace_block(doc, "a", "new a")
    assert new == doc.replace("old a", "new a")
    with pytest.raises(SystemExit, match="no <!-- regenerate:c -->"):
        regenerate.replace_block(doc, "c", "x")
    names = [name for name, _, _ in regenerate.sections(False, ROOT / "benchmarks")]
    assert names == ["adam-64m", "fractions", "sweep", "multitensor"]
    results_md = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert all(f"<!-- regenerate:{n} -->" in results_md for n in names)


def test_method_effects_table_has_a_column_per_method():
    effects = _script("method_effects")

    def run_data(share):
        fused = {"fraction_of_ceiling": {"median": share, "spread": None, "unsettled": False}}
        return {"command": "fusedopt bench ...", "wall_s": 10.0,
                "load_average": {"start": {"1min": 0.5}, "end": {"1min": 0.7}},
                "cases": [{"optimizer": "lion", "contenders": {"fused": fused}}]}

    runs = [("one", [run_data(0.83), run_data(0.70), run_data(1.0)]),
            ("two", [run_data(0.99), run_data(1.0), run_data(0.98)])]
    md = effects.markdown(runs, [])
    assert "| lion | 0.83~ (36%) | 0.99 (2%) |" in md
    assert ("1. one: `fusedopt bench ...` (3 passes, 30 s in all; 1-minute load average "
            "0.5-0.5 at the starts, 0.7-0.7 at the ends)") in md
    assert len(effects.METHODS) == 8 and effects.METHODS[-1][-1] == "busy"


def test_fractions_table_gives_share_spread_and_torch_ratio():
    r = _result([1e-3, 1e-3, 1e-3], [0.9e-3, 0.9e-3, 0.9e-3])
    for run in r.runs:
        run.samples[cs.TORCH_FUSED] = [2e-3] * 3
    settings = sweep.Settings(("adam",), (2**20,), ("float32",), "cpu")
    lines = markdown.fractions_table(sweep.Outcome(settings, [r]))
    assert lines[2] == "| adam | 16+12 | 29.4 | 32.6 | 0.90 | 0% | 0.50x |"


def test_results_survive_a_json_round_trip():
    r = _result([1e-3, 1.2e-3], [0.9e-3, 1e-3])
    settings = sweep.Settings(("adam",), (2**20,), ("float32",), "cpu")
    data = report.to_dict(sweep.Outcome(settings, [r]), {})
    (back,) = report.results_from_json(data)
    assert back.names == r.names and back.inner == r.inner
    assert back.time(cs.FUSED) == r.time(cs.FUSED) and back.bytes == r.bytes
    assert results.ISOLATED == back.method


def test_calls_per_block_serve_the_fastest_without_stalling_on_the_slowest():
    from fusedopt.tools.bench.timing import inner_calls

    assert inner_calls([1e-5, 2e-5], min_sample_s=2e-3) == 200
    assert inner_calls([1e-5, 1e-3], min_sample_s=2e-3, max_block_s=0.05) == 50
    assert inner_calls([1e-2, 2.0]) == 1  # a step slower than a block still gets one call
