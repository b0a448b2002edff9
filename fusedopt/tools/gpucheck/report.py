"""report.md and report.json of a ``gpucheck`` run, from the dict the run builds.

The JSON is the dict itself; the markdown shows the device, the budget and what each phase
did or skipped, the tests' summary and output, and one table per benchmark phase: time,
GB/s, fraction of copy bandwidth and launches per step of every contender.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Lines of each test shard's output shown in report.md (the JSON keeps all of it).
OUTPUT_TAIL_LINES = 60


def _us(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.1f}"


def _num(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _launches(row: dict) -> str:
    own = row.get("launches_fusedopt")
    device = row.get("launches_device")
    parts = []
    if own is not None:
        parts.append(f"{own} (fusedopt)")
    if device:
        parts.append(f"{device['kernels']} kernels + {device['copies']} copies (CUPTI)")
    return "; ".join(parts) or "-"


def bench_table(cases: list[dict]) -> list[str]:
    lines = ["| optimizer | dtype | case | contender | median us | GB/s | of copy | "
             "launches per step |", "|---|---|---|---|---:|---:|---:|---|"]
    for c in cases:
        head = f"| {c['optimizer']} | {c['dtype']} | {c['case']} "
        if "skipped" in c or "error" in c:
            lines.append(head + f"| {c.get('skipped') or 'ERROR: ' + c['error']} | | | | |")
            continue
        for name, row in c.get("contenders", {}).items():
            if "error" in row:
                lines.append(head + f"| {name} | ERROR: {row['error']} | | | |")
                continue
            lines.append(head + f"| {name} | {_us(row.get('median_s'))} | "
                         f"{_num(row.get('gb_per_s'))} | "
                         f"{_num(row.get('fraction_of_copy'), '{:.0%}')} | {_launches(row)} |")
    return lines


def _tests(tests: dict | None) -> list[str]:
    if not tests:
        return ["Not run.", ""]
    if "error" in tests:
        return [f"ERROR: {tests['error']}", ""]
    totals = ", ".join(f"{v} {k}" for k, v in sorted(tests.get("totals", {}).items())) or "none"
    lines = [f"`{tests.get('command', '')}` in {len(tests.get('shards', []))} shard(s), "
             f"{tests.get('collected', 0)} tests collected, {tests.get('wall_s', 0):.0f} s: "
             f"**{'passed' if tests.get('ok') else 'NOT PASSED'}** ({totals}).", ""]
    for i, shard in enumerate(tests.get("shards", [])):
        tail = shard["output"].splitlines()[-OUTPUT_TAIL_LINES:]
        state = "timed out" if shard["timed_out"] else f"exit {shard['returncode']}"
        lines += [f"<details><summary>shard {i + 1}: {shard['tests'] or '?'} tests, {state}"
                  "</summary>", "", "```", *tail, "```", "", "</details>", ""]
    return lines


def markdown(data: dict) -> str:
    dev = data.get("device", {})
    budget = data.get("budget", {})
    lines = [
        "# fusedopt gpucheck report",
        "",
        f"Device: {dev.get('name', '?')} (compute capability {dev.get('compute_capability', '?')}"
        f", {dev.get('memory_bytes', 0) / 2**30:.0f} GiB); CuPy {dev.get('cupy', '?')}, CUDA "
        f"runtime {dev.get('cuda_runtime', '?')}, driver {dev.get('cuda_driver', '?')}; "
        f"versions: {', '.join(f'{k} {v}' for k, v in data.get('versions', {}).items())}.",
        "",
        f"Wall time {data.get('wall_s', 0):.0f} s of a {budget.get('total_s', 0):.0f} s budget. "
        f"{budget.get('estimate', '')}",
        "",
        "| phase | seconds | skipped | error |",
        "|---|---:|---|---|",
    ]
    for name, p in data.get("phases", {}).items():
        lines.append(f"| {name} | {p.get('wall_s', 0):.0f} | "
                     f"{'; '.join(p.get('skipped', [])) or '-'} | {p.get('error') or '-'} |")
    lines += ["", "## GPU tests (`pytest -m gpu`)", "", *_tests(data.get("tests"))]
    sections = (("single", "Single tensors: fused vs unfused CuPy vs torch fused vs copy"),
                ("multitensor", "The 200-tensor mix (one step over every tensor)"),
                ("family", "Every optimizer at 2^26 float32: fused vs copy"))
    for key, title in sections:
        lines += [f"## {title}", ""]
        cases = data.get(key)
        lines += (bench_table(cases) if cases else ["Not run."]) + [""]
    lines += ["GB/s = bytes the step must move (n * (read + write bytes per element), "
              "fusedopt/tools/bench/traffic.py) / median time (CUDA events, interleaved samples); "
              "of copy = against a device-to-device copy of the same bytes; unfused and torch "
              "are charged the same bytes.", ""]
    return "\n".join(lines)


def write(data: dict, folder) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / "report.md", folder / "report.json"
    js.write_text(json.dumps(data, indent=1, default=str))
    md.write_text(markdown(data))
    return md, js
