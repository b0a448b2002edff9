"""Fused CPU Adam (float32) against the memory-traffic ceiling, torch's fused Adam and unfused.

Four cases, every contender timed interleaved round by round, the whole set repeated
``--repeats-of-sweep`` times:

- ``--elements`` (default 2**26 = 64M), isolated: fused, the traffic ceiling (the same
  Numba loop and launch table reading param, grad, m, v and writing param, m, v with
  trivial math), ``torch.optim.Adam(fused=True)`` and the unfused backend, each in a
  worker process of its own;
- the same in one process (torch's and Numba's thread pools side by side: what a user
  mixing both sees), labelled "same process";
- ``--small-elements`` (default 2**20 = 1M), isolated, fused against torch's fused Adam and
  the ceiling, in blocks of calls (the arrays stay cache-resident within a block) and in
  single calls (every call starts with the other contenders' data in the cache).

Prints a markdown block for benchmarks/RESULTS.md: the command, the machine, each case's
method, medians across repeats, spreads and ratios, and the ceiling's drift over the run.

    python benchmarks/cpu_adam_ceiling.py
    python benchmarks/cpu_adam_ceiling.py --elements 65536 --small-elements 4096 \\
        --rounds 2 --repeats-of-sweep 1   # smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys

from fusedopt.algorithms.registry import lookup
from fusedopt.tools.bench import machine, sweep
from fusedopt.tools.bench.contenders import CEILING, FUSED, TORCH_FUSED, UNFUSED
from fusedopt.tools.bench.isolated import Pool
from fusedopt.tools.bench.markdown import machine_line
from fusedopt.tools.bench.report import (
    LEGEND,
    blocks_text,
    mark,
    share_text,
    spread_text,
    time_text,
)
from fusedopt.tools.bench.results import ISOLATED, SAME_PROCESS
from fusedopt.tools.cli import element_count

LARGE, SMALL = 2**26, 2**20
DTYPE = "float32"


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=element_count, default=LARGE)
    parser.add_argument("--small-elements", type=element_count, default=SMALL)
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=7)
    parser.add_argument("--repeats-of-sweep", type=int, default=3)
    return parser.parse_args(argv)


#: (label, size argument, method, calls per block, contenders)
CASES = (
    ("isolated", "elements", ISOLATED, None, (FUSED, CEILING, TORCH_FUSED, UNFUSED)),
    ("same process", "elements", SAME_PROCESS, None, (FUSED, CEILING, TORCH_FUSED, UNFUSED)),
    ("isolated, blocks", "small_elements", ISOLATED, None, (FUSED, CEILING, TORCH_FUSED)),
    ("isolated, single calls", "small_elements", ISOLATED, 1, (FUSED, CEILING, TORCH_FUSED)),
)


def measure(args):
    """[(label, Result)] over every repeat, and the drift probe's start and end GB/s."""
    merged: dict[str, object] = {}
    with Pool() as pool:
        start = sweep.probe("cpu", ISOLATED, pool)
        for _ in range(args.repeats_of_sweep):
            for label, size, method, calls, only in CASES:
                one = sweep.measure("adam", getattr(args, size), DTYPE, "cpu", args.rounds,
                                    only=only, method=method, pool=pool,
                                    calls_per_block=calls)
                if label in merged:
                    merged[label].merge(one)
                else:
                    merged[label] = one
        end = sweep.probe("cpu", ISOLATED, pool)
    drift = sweep.Drift(sweep.probe_name("cpu"), start, end) if start and end else None
    return list(merged.items()), drift


def markdown(cases, drift, argv, described: dict, repeats: int, rounds: int) -> str:
    spec = lookup("adam")
    flow = sweep.traffic(spec, spec.flags(spec.defaults(), "keras"), DTYPE)
    l3, l3_source = machine.l3_cache()
    lines = [
        f"### CPU Adam, {DTYPE}: fused vs traffic ceiling vs torch fused vs unfused",
        "",
        "```",
        " ".join(["python benchmarks/cpu_adam_ceiling.py", *map(shlex.quote, argv)]).strip(),
        "```",
        "",
        machine_line(described),
        f"Bytes per step: n * ({flow.read_bytes} read + {flow.write_bytes} written). "
        f"{repeats} repeats x {rounds} interleaved rounds per case; median across repeats of "
        "each repeat's median; spread = (max - min) / median across repeats; ratios taken "
        "within each repeat. Isolated: each contender in a worker process of its own; same "
        "process: all in one, sharing param and grad. Working set of one contender = "
        f"param, grad, m, v; L3 {l3 / 2**20:.0f} MiB (from {l3_source})." if l3 else "",
        "",
        "| elements | method | calls per block | contender | median | spread | GB/s | "
        "of ceiling | time / fused |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in cases:
        for name in r.names:
            t, ratio = r.time(name), r.ratio(FUSED, name)  # name's time / fused time
            lines.append(
                f"| {r.size:,} | {label} | {blocks_text(r.inner)} | {name} | "
                f"{mark(time_text(t.median), t)} | {spread_text(t)} | "
                f"{mark(f'{r.gb_per_s(name):.1f}', t)} | "
                f"{share_text(r.fraction_of_ceiling(name))} | "
                f"{'-' if ratio is None else mark(f'{ratio.median:.2f}', ratio)} |")
        for note in r.notes:
            lines.append(f"\nNote ({label}, {r.size:,} elements): {note}")
    lines += ["", "time / fused = the contender's time over fused's, per repeat (torch fused "
              "row: > 1 means fused is faster). " + LEGEND + ".", ""]
    if drift is not None:
        lines.append(f"Ceiling drift ({drift.case}): {drift.start_gb_per_s:.1f} -> "
                     f"{drift.end_gb_per_s:.1f} GB/s ({100 * drift.change:+.0f}%)"
                     + ("; ABOVE 20%: the machine changed during the run." if drift.exceeded
                        else "."))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    cases, drift = measure(args)
    print(markdown(cases, drift, argv, machine.describe(torch_threads=False),
                   args.repeats_of_sweep, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
