"""The ``gpu``-marked tests, run with ``python3 -m pytest -q -m gpu`` in a few processes at
once (shards), each killed at the phase's deadline; their output is kept for the report.

Most of the tests' time is the CPU side of each comparison (a Numba compile per variant,
single-threaded), so shards on a many-core GPU host cut the wall time by about their count.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TESTS = ROOT / "tests"
#: At most this many pytest processes at once (and no more than the CPU count).
MAX_SHARDS = 8
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def gpu_test_files() -> list[str]:
    """Test files with a ``gpu`` mark (a file-level ``pytestmark`` or a decorator)."""
    return sorted(str(p.relative_to(ROOT)) for p in TESTS.glob("test_*.py")
                  if "mark.gpu" in p.read_text(errors="replace"))


def _pytest(args) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *args]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def collect(files, timeout_s: float) -> list[str]:
    """Node ids of the gpu-marked tests in ``files``."""
    done = subprocess.run(_pytest(["--collect-only", *files]), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout_s)
    return [line.strip() for line in done.stdout.splitlines() if "::" in line]


def _group(node: str) -> str:
    """Tests of one optimizer share Numba compiles: keep them in one shard."""
    match = re.search(r"\[([a-z0-9]+)", node)
    return match.group(1) if match else node.split("::")[0]


def shards(nodes, count: int) -> list[list[str]]:
    """Groups of node ids, largest groups first onto the lightest shard."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(_group(node), []).append(node)
    out: list[list[str]] = [[] for _ in range(max(1, count))]
    for members in sorted(groups.values(), key=len, reverse=True):
        min(out, key=len).extend(members)
    return [s for s in out if s]


def summary(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line ('3 passed, 1 failed in 2.0s')."""
    lines = [line for line in output.splitlines() if _SUMMARY.search(line)]
    if not lines:
        return {}
    counts = {}
    for n, what in _SUMMARY.findall(lines[-1]):
        counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def run(phase) -> dict:
    """Run the gpu tests within ``phase``; a dict for the report."""
    files = gpu_test_files()
    out = {"files": files, "shards": [], "command": " ".join(_pytest(files)[1:])}
    started = time.monotonic()
    try:
        nodes = collect(files, timeout_s=max(10.0, min(120.0, phase.left())))
    except subprocess.TimeoutExpired:
        nodes = []
    out["collected"] = len(nodes)
    count = min(MAX_SHARDS, os.cpu_count() or 1)
    plan = shards(nodes, count) if nodes else [files]  # collection failed: one plain run
    procs = []
    for i, args in enumerate(plan):
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"gpucheck-shard-{os.getpid()}-{i}.log",
                   "w+")
        extra = [] if nodes else ["--continue-on-collection-errors"]
        procs.append((subprocess.Popen(_pytest([*extra, *args]), cwd=ROOT, env=_env(),
                                       stdout=log, stderr=subprocess.STDOUT, text=True),
                      log, len(args) if nodes else None))
    try:
        for proc, log, n in procs:
            try:
                proc.wait(timeout=max(1.0, phase.left()))
                timed_out = False
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                timed_out = True
            log.seek(0)
            text = log.read()
            out["shards"].append({"tests": n, "returncode": proc.returncode,
                                  "timed_out": timed_out, "summary": summary(text),
                                  "output": text})
    finally:  # also when the watchdog interrupts: no shard outlives the run
        for proc, log, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            os.unlink(log.name)
    totals: dict[str, int] = {}
    for shard in out["shards"]:
        for k, v in shard["summary"].items():
            totals[k] = totals.get(k, 0) + v
    out["totals"] = totals
    out["wall_s"] = time.monotonic() - started
    out["ok"] = bool(out["shards"]) and all(
        s["returncode"] == 0 and not s["timed_out"] for s in out["shards"])
    if any(s["timed_out"] for s in out["shards"]):
        phase.skip("gpu tests not finished by the phase's deadline (shards killed)")
    return out
