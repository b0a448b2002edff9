"""Regenerate every CPU table of benchmarks/RESULTS.md, and the roofline pictures.

    flock -x /tmp/fusedopt-quiet.lock python benchmarks/regenerate.py     # or make bench-results
    python benchmarks/regenerate.py --quick     # smaller, into /tmp/fusedopt-bench-quick

Runs each section's command (every contender in a worker process of its own; each section
repeated three times, medians and spreads across repeats), writes its markdown between
``<!-- regenerate:NAME -->`` and ``<!-- /regenerate:NAME -->`` in RESULTS.md (the prose
around the markers is left alone), keeps each sweep's JSON next to it and draws one PNG per
optimizer family from the sweeps. About 15 minutes on a 2-core machine; ``--quick`` about 4.
Run it on a quiet machine: the figures are only as good as that.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout's fusedopt, even without an install

SWEEP_SIZES = "2^10,2^16,2^22"
FRACTION_SIZES = "2^24,2^26"


def sections(quick: bool, out: Path) -> list[tuple[str, list[str], Path | None]]:
    """(marker name, command, JSON it writes or None); the commands print or write markdown."""
    py, bench = [sys.executable], [sys.executable, "-m", "fusedopt", "bench"]
    if quick:
        small = ["--rounds", "3", "--repeats-of-sweep", "2"]
        return [
            ("adam-64m", [*py, str(HERE / "cpu_adam_ceiling.py"), "--elements", "2^24",
                          "--small-elements", "2^20", *small], None),
            ("fractions", [*bench, "--sizes", "2^22,2^24", "--dtype", "float32",
                           "--contenders", "fused,torch fused", *small], out / "fractions.json"),
            ("sweep", [*bench, "--sizes", "2^10,2^16,2^20", "--dtype", "float32", *small],
             out / "sweep.json"),
            ("multitensor", [*py, str(HERE / "bench_multitensor.py"), "--rounds", "5",
                             "--repeats-of-sweep", "2"], None),
        ]
    return [
        ("adam-64m", [*py, str(HERE / "cpu_adam_ceiling.py")], None),
        ("fractions", [*bench, "--sizes", FRACTION_SIZES, "--dtype", "float32",
                       "--contenders", "fused,torch fused"], out / "fractions.json"),
        ("sweep", [*bench, "--sizes", SWEEP_SIZES, "--dtype", "float32"], out / "sweep.json"),
        ("multitensor", [*py, str(HERE / "bench_multitensor.py")], None),
    ]


def shown(command: list[str]) -> str:
    """The command as a reader types it from the checkout's root."""
    text = []
    for i, part in enumerate(command):
        if i == 0:
            text.append("python")
        elif part.startswith(str(HERE.parent)):
            text.append(str(Path(part).relative_to(HERE.parent)))
        else:
            text.append(part)
    joined = shlex.join(text)
    return joined.replace("python -m fusedopt bench", "fusedopt bench")


def run_section(name: str, command: list[str], json_path: Path | None, scratch: Path) -> str:
    md = scratch / f"{name}.md"
    full = list(command)
    if json_path is not None:  # a fusedopt bench run: it writes its markdown and JSON
        full += ["--json", str(json_path), "--markdown", str(md)]
    started = time.time()
    print(f"[{name}] {shown(full)}", file=sys.stderr, flush=True)
    done = subprocess.run(full, capture_output=True, text=True, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"[{name}] failed ({done.returncode}):\n{done.stderr[-4000:]}")
    text = md.read_text() if json_path is not None else done.stdout
    if json_path is not None:  # show the command a reader runs, not the temp paths
        shown_command = shown([*command, "--json", _rel(json_path), "--markdown", "..."])
        text = re.sub(r"```\n.*?\n```", lambda _: f"```\n{shown_command}\n```", text,
                      count=1, flags=re.S)
    minutes = (time.time() - started) / 60
    print(f"[{name}] {minutes:.1f} min", file=sys.stderr, flush=True)
    return text.strip() + f"\n\n(This block took {minutes:.1f} min.)\n"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


def replace_block(document: str, name: str, text: str) -> str:
    begin, end = f"<!-- regenerate:{name} -->", f"<!-- /regenerate:{name} -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(document):
        raise SystemExit(f"RESULTS.md has no {begin} ... {end} block for section {name!r}")
    return pattern.sub(lambda _: f"{begin}\n{text}\n{end}", document, count=1)


def draw(out: Path, json_paths: list[Path], prefix: Path) -> list[Path]:
    from fusedopt.tools.bench import plot
    from fusedopt.tools.bench.report import results_from_json

    results = [r for p in json_paths for r in results_from_json(json.loads(p.read_text()))]
    return plot.write_family_pngs(prefix, sorted(results, key=lambda r: (r.optimizer, r.size)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes, rounds and repeats; writes into --out only")
    parser.add_argument("--out", type=Path,
                        help="folder for the JSON, markdown and PNGs (default benchmarks/, "
                             "with --quick /tmp/fusedopt-bench-quick)")
    parser.add_argument("--only", help="comma-separated section names to rerun")
    args = parser.parse_args(argv)
    out = args.out or (Path("/tmp/fusedopt-bench-quick") if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    results_md = HERE / "RESULTS.md"
    target = out / "RESULTS.md" if args.quick else results_md
    document = results_md.read_text()
    started = time.time()
    wanted = None if not args.only else set(args.only.split(","))
    json_paths = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, command, json_path in sections(args.quick, out):
            if json_path is not None:
                json_paths.append(json_path)
            if wanted is not None and name not in wanted:
                continue
            text = run_section(name, command, json_path, Path(scratch))
            # Read again before writing: a section at a time, so an interrupted run keeps its
            # work and prose edited meanwhile survives.
            document = target.read_text() if target.exists() else document
            target.write_text(replace_block(document, name, text))
    pngs = draw(out, [p for p in json_paths if p.exists()], out / "roofline")
    print(f"wrote {target} and {', '.join(map(str, pngs))} in "
          f"{(time.time() - started) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
