"""fusedopt bench on a shared machine: contention is detected from the load average, other
processes' CPU time and the drift probe, said in the report, and keeps every figure
unsettled; tables keep every cell whole in a pipe and fit a narrow terminal."""

import io
import re

from rich.console import Console

from fusedopt.tools.bench import contention, report
from fusedopt.tools.bench import contenders as cs
from fusedopt.tools.bench.results import Figure, Result, Run
from fusedopt.tools.bench.sweep import Drift, Outcome, Settings
from fusedopt.tools.bench.traffic import Traffic


def _watch(monkeypatch, load: float, others_busy: float, cores: int = 4):
    """A Watch that saw ``load`` at the start and, over 10 s, the machine busy for
    ``others_busy`` core-seconds besides 5 of its own."""
    clock = iter([0.0, 10.0])
    busy = iter([100.0, 100.0 + 5.0 + others_busy])
    own = iter([1.0, 6.0])
    monkeypatch.setattr(contention.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(contention, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(contention, "_own_seconds", lambda: next(own))
    monkeypatch.setattr(contention, "_load_1min", lambda: load)
    monkeypatch.setattr(contention.os, "cpu_count", lambda: cores)
    return contention.Watch()


def test_a_quiet_machine_is_said_quiet(monkeypatch):
    verdict = _watch(monkeypatch, load=0.3, others_busy=2.0).verdict()
    assert not verdict.busy and verdict.others_cores == 0.2
    assert verdict.line().startswith("Machine quiet")


def test_load_at_the_start_marks_the_run_busy(monkeypatch):
    verdict = _watch(monkeypatch, load=2.5, others_busy=0.0).verdict()
    assert verdict.busy and "load average 2.50 on 4 cores" in verdict.line()


def test_other_processes_during_the_run_mark_it_busy(monkeypatch):
    verdict = _watch(monkeypatch, load=0.0, others_busy=15.0).verdict()
    assert verdict.busy and "other processes used 1.50 of 4 cores" in verdict.line()


def test_the_drift_probe_marks_it_busy(monkeypatch):
    drift = Drift("probe", 10.0, 7.0)
    verdict = _watch(monkeypatch, load=0.0, others_busy=0.0).verdict(drift)
    assert verdict.busy and "-30%" in verdict.line()


def test_a_busy_figure_is_never_settled():
    assert not Figure.of([1.0, 1.0, 1.0]).unsettled
    assert Figure.of([1.0, 1.0, 1.0], busy=True).unsettled


def _outcome(busy: bool) -> Outcome:
    runs = [Run(100, {cs.FUSED: [1.2e-5, 1.3e-5], cs.UNFUSED: [9.1e-5, 9.0e-5],
                      cs.TORCH_FUSED: [2.2e-5, 2.1e-5], cs.CEILING: [1.0e-5, 1.0e-5]})
            for _ in range(3)]
    result = Result("adam", 1024, "float32", "cpu", Traffic(16, 12), runs=runs,
                    contender_bytes=16384, working_set=65536, busy=busy)
    return Outcome(Settings(("adam",), (1024,), ("float32",), "cpu"), [result])


def _printed(outcome, **console) -> str:
    out = io.StringIO()
    report.print_tables(Console(file=out, **console), outcome, (2**25, "test"))
    return out.getvalue()


def test_busy_figures_print_unsettled_whatever_their_spread():
    assert "12.5 us " in _printed(_outcome(False), width=80)
    assert "12.5 us~" in _printed(_outcome(True), width=80)


def test_piped_tables_keep_every_cell_whole():
    text = _printed(_outcome(True), width=80)  # not a terminal: plain text
    row = next(line for line in text.splitlines() if "12.5 us" in line)
    assert re.search(r"12\.5 us~ .*7\.24x~ .*1\.72x~$", row), row
    assert "\x1b[" not in text and "…" not in text


def test_a_narrow_terminal_gets_tables_that_fit_with_their_units():
    text = _printed(_outcome(False), width=72, force_terminal=True, color_system=None)
    assert max(map(len, text.splitlines())) <= 72
    assert "…" not in text and "12.5 us" in text and "1.72x" in text and "7.24x" in text
