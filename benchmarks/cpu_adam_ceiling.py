"""Fused CPU Adam (float32) against the memory-traffic ceiling, torch's fused Adam and unfused.

One run, two sizes, every contender timed interleaved round by round:
- ``--elements`` (default 2**26 = 64M): fused, the traffic ceiling (the same Numba loop
  and launch table reading param, grad, m, v and writing param, m, v with trivial math),
  ``torch.optim.Adam(fused=True)`` on a tensor sharing the param's memory, and the unfused
  backend;
- ``--small-elements`` (default 2**20 = 1M): fused against torch's fused Adam (and the ceiling).

Prints a markdown block for benchmarks/RESULTS.md: the command, the machine, medians,
spreads and ratios. Run it on a quiet machine; the figures are only as good as that.

    python benchmarks/cpu_adam_ceiling.py
    python benchmarks/cpu_adam_ceiling.py --elements 65536 --repeats 2   # smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys

from fusedopt._bench import machine, sweep
from fusedopt._bench.contenders import CEILING, FUSED, TORCH_FUSED, UNFUSED

LARGE, SMALL = 2**26, 2**20
DTYPE = "float32"


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=LARGE)
    parser.add_argument("--small-elements", type=int, default=SMALL)
    parser.add_argument("--repeats", type=int, default=sweep.DEFAULT_REPEATS)
    return parser.parse_args(argv)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(results, argv, described: dict) -> str:
    numba, versions = described["numba"], described["versions"]
    flow = results[0].traffic
    lines = [
        f"### CPU Adam, {DTYPE}: fused vs traffic ceiling vs torch fused vs unfused",
        "",
        "```",
        " ".join(["python benchmarks/cpu_adam_ceiling.py", *map(shlex.quote, argv)]).strip(),
        "```",
        "",
        f"Machine: {described['cpu_model']}, {described['cpu_cores']} logical cores; "
        f"numba {versions['numba']} ({numba['threading_layer']} layer, {numba['threads']} "
        f"threads), torch {versions['torch']} ({described.get('torch_threads', '-')} threads), "
        f"numpy {versions['numpy']}.",
        f"Bytes per step: n * ({flow.read_bytes} read + {flow.write_bytes} written). "
        "Medians of interleaved rounds; IQR = interquartile range.",
        "",
        "| elements | contender | median ms | IQR ms | GB/s | of ceiling | fused speedup |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for name in r.names:
            s = r.summary(name)
            share = r.fraction_of_ceiling(name)
            lines.append(f"| {r.size:,} | {name} | {_ms(s.median)} | {_ms(s.q3 - s.q1)} | "
                         f"{r.gb_per_s(name):.1f} | {'-' if share is None else f'{share:.0%}'} "
                         f"| {_ratio(r.ratio(FUSED, name))} |")
        for note in r.notes:
            lines.append(f"\nNote ({r.size:,} elements): {note}")
    for caveat in machine.caveats(numba, any(TORCH_FUSED in r.samples for r in results)):
        lines.append(f"\nCaveat: {caveat}")
    lines.append("")
    lines.append("fused speedup = contender's median time / fused median time "
                 "(ceiling row: fused time relative to the bandwidth floor).")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    results = [
        sweep.measure("adam", args.elements, DTYPE, "cpu", args.repeats,
                      only=(FUSED, CEILING, TORCH_FUSED, UNFUSED)),
        sweep.measure("adam", args.small_elements, DTYPE, "cpu", args.repeats,
                      only=(FUSED, CEILING, TORCH_FUSED)),
    ]
    print(markdown(results, argv, machine.describe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
