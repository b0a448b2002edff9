"""Which part of a benchmark's method moves a CPU optimizer's fraction of its ceiling?

Runs ``fusedopt bench`` at one size (default 2^24 float32) for a few optimizers under
several methods, each as its own process, and prints one markdown table: the fused step's
share of the traffic ceiling (median across repeats, and its spread) per optimizer and
method. The methods separate the candidates for a low figure:

- ``last round``: every contender in one process, torch's included, single calls (at 2^24
  the automatic block is one call): the method of the figures being questioned;
- the same with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning);
- one process, only fused and ceiling (torch never imported), single calls and blocks of 3;
- isolated (each contender in a worker process of its own), single calls and blocks of 3;
- isolated with every contender (the last round's set, without the shared process);
- isolated, blocks of 3, while one other process keeps a core busy (a controlled busy
  window: one more runnable thread than the machine has cores to spare).

The methods take turns: pass 1 runs each method once, then pass 2, ... (``--passes``,
default 3), so a slow stretch of the machine falls on every method rather than on whichever
ran then; each cell is the median across passes and the spread across them. Run it under
``flock -x /tmp/fusedopt-quiet.lock`` so no test suite shares the machine.

    python benchmarks/method_effects.py
    python benchmarks/method_effects.py --optimizer adam --size 4096 --rounds 2 \\
        --passes 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fusedopt.tools.bench.results import Figure

OPTIMIZERS = "adam,sgd,rmsprop,adagrad,adadelta,lion"
PAIR = "fused,ceiling"

#: A process that keeps one core busy for as long as it lives.
HOG = [sys.executable, "-c", "while True: pass"]

#: (label, extra fusedopt bench arguments, extra environment[, "busy"])
METHODS = (
    ("last round: one process, all contenders, single calls", ["--same-process"], {}),
    ("same, OMP_WAIT_POLICY=PASSIVE", ["--same-process"], {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("one process, no torch, single calls",
     ["--same-process", "--no-torch", "--contenders", PAIR, "--calls-per-block", "1"], {}),
    ("one process, no torch, blocks of 3",
     ["--same-process", "--no-torch", "--contenders", PAIR, "--calls-per-block", "3"], {}),
    ("isolated, single calls", ["--contenders", PAIR, "--calls-per-block", "1"], {}),
    ("isolated, blocks of 3", ["--contenders", PAIR, "--calls-per-block", "3"], {}),
    ("isolated, all contenders, single calls", ["--calls-per-block", "1"], {}),
    ("isolated, blocks of 3, one core kept busy by `python -c 'while True: pass'`",
     ["--contenders", PAIR, "--calls-per-block", "3"], {}, "busy"),
)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default=OPTIMIZERS)
    parser.add_argument("--size", default="2^24")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--passes", type=int, default=3)
    return parser.parse_args(argv)


def run_method(args, extra, env_extra, out: Path, busy: bool = False) -> dict:
    command = [sys.executable, "-m", "fusedopt", "bench", "--sizes", args.size, "--dtype",
               "float32", "--optimizer", args.optimizer, "--rounds", str(args.rounds),
               "--repeats-of-sweep", "1", "--no-probe", *extra,
               "--json", str(out)]
    started = time.time()
    hog = subprocess.Popen(HOG) if busy else None
    try:
        done = subprocess.run(command, env={**os.environ, **env_extra}, capture_output=True,
                              text=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    data = json.loads(out.read_text())
    data["wall_s"] = time.time() - started
    data["command"] = " ".join([*(f"{k}={v}" for k, v in env_extra.items()), "fusedopt bench",
                                *map(shlex.quote, command[4:-2])])
    return data


def _shares(passes, name: str) -> list[float]:
    """The fused step's fraction of its ceiling for ``name`` in each pass that has one."""
    out = []
    for data in passes:
        case = next((c for c in data["cases"] if c["optimizer"] == name), None)
        fused = case and case["contenders"].get("fused")
        if fused and fused["fraction_of_ceiling"]:
            out.append(fused["fraction_of_ceiling"]["median"])
    return out


def _cell(values) -> str:
    if not values:
        return "-"
    f = Figure.of(values)
    spread = "" if f.spread is None else f" ({100 * f.spread:.0f}%)"
    return f"{f.median:.2f}{'~' if f.unsettled else ''}{spread}"


def _load(passes, when: str) -> str:
    values = [d["load_average"].get(when, {}).get("1min") for d in passes]
    values = [v for v in values if v is not None]
    return "-" if not values else f"{min(values):.1f}-{max(values):.1f}"


def markdown(runs, argv) -> str:
    """``runs``: [(label, [JSON of each pass])]."""
    names = list(dict.fromkeys(c["optimizer"] for _, ps in runs for d in ps for c in d["cases"]))
    lines = ["```", " ".join(["python benchmarks/method_effects.py",
                              *map(shlex.quote, argv)]), "```", "",
             "Fused step's share of its traffic ceiling: median across passes (spread across "
             "passes in parentheses; ~ above 15%). Column n is method n, each pass one run "
             "of its command:", ""]
    for i, (label, passes) in enumerate(runs):
        wall = sum(d["wall_s"] for d in passes)
        lines.append(f"{i + 1}. {label}: `{passes[0]['command']}` ({len(passes)} passes, "
                     f"{wall:.0f} s in all; 1-minute load average {_load(passes, 'start')} at "
                     f"the starts, {_load(passes, 'end')} at the ends)")
    lines += ["", "| optimizer | " + " | ".join(str(i + 1) for i in range(len(runs))) + " |",
              "|---|" + "---:|" * len(runs)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(_shares(ps, name)) for _, ps in runs)
                     + " |")
    return "\n".join(lines + [""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    runs = [(label, []) for label, *_ in METHODS]
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.passes):
            for i, (label, extra, env, *busy) in enumerate(METHODS):
                out = Path(tmp) / f"{k}-{i}.json"
                runs[i][1].append(run_method(args, extra, env, out, busy=bool(busy)))
                print(f"pass {k + 1}: {label}: done", file=sys.stderr, flush=True)
    print(markdown(runs, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
