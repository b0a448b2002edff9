"""Many tensors in one step: fusedopt's list path, a flat arena, torch's fused Adam; overhead.

Two cases (float32 Adam on the CPU), each contender in a worker process of its own
(``--same-process``: all in this one), interleaved round by round, the whole set repeated
``--repeats-of-sweep`` times:

- a transformer-like model (fusedopt/tools/bench/multitensor.py): ``--vectors`` vectors of
  1k-4k elements and ``--matrices`` matrices of 0.25M-1M elements (defaults 170 and 30,
  about 22.6M elements). Contenders: ``apply_gradients`` over the arrays;
  ``torch.optim.Adam(fused=True)`` over tensors of the same sizes; one ``apply_gradients``
  over a single flat array of the same total size; the :class:`fusedopt.FlatParams` step.
- per-step overhead: one tensor of ``--small`` elements (default 1,000), fusedopt against
  torch's fused Adam.

``--scale`` multiplies every size (smoke tests use a tiny one). Prints a markdown block for
benchmarks/RESULTS.md: the command, the machine, the method, medians across repeats,
spreads and ratios.

    python benchmarks/bench_multitensor.py
    python benchmarks/bench_multitensor.py --scale 0.001 --rounds 2 --repeats-of-sweep 1
"""

from __future__ import annotations

import argparse
import shlex
import sys

from fusedopt.tools.bench import machine, multitensor, timing
from fusedopt.tools.bench.isolated import Pool, time_isolated
from fusedopt.tools.bench.markdown import machine_line
from fusedopt.tools.bench.multitensor import ARENA, FLAT, LIST, TORCH  # noqa: F401 (the names shown)
from fusedopt.tools.bench.report import LEGEND, mark, spread_text
from fusedopt.tools.bench.results import ISOLATED, SAME_PROCESS, Figure
from fusedopt.tools.bench.worker import describe_process


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=multitensor.VECTORS)
    parser.add_argument("--matrices", type=int, default=multitensor.MATRICES)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=11)
    parser.add_argument("--repeats-of-sweep", type=int, default=3)
    parser.add_argument("--same-process", action="store_true")
    return parser.parse_args(argv)


def _time_once(sizes, method: str, rounds: int, pool: Pool, notes: list[str]):
    kwargs = {name: dict(contender=name, sizes=sizes) for name in multitensor.NAMES}
    if method == ISOLATED:
        return time_isolated(pool, multitensor.BUILDER, kwargs, rounds, notes)
    built = [(name, multitensor.build(**kw)) for name, kw in kwargs.items()]
    for _, b in built:
        notes.extend(n for n in b.notes if n not in notes)
    local = [timing.LocalContender(name, b.step) for name, b in built if b.step is not None]
    kept, first = timing.warm_up(local, timing.synchronizer("cpu"), notes)
    return timing.time_rounds(kept, first, rounds) if kept else None


def measure(sizes, method: str, rounds: int, repeats: int, pool: Pool, notes: list[str]):
    """name -> (time Figure, Figure of time / fusedopt list's time) across repeats."""
    runs = [run for _ in range(repeats)
            if (run := _time_once(sizes, method, rounds, pool, notes)) is not None]
    names = [n for n in multitensor.NAMES if runs and all(n in r.samples for r in runs)]
    out = {}
    for name in names:
        ratio = (Figure.of([r.median(name) / r.median(multitensor.LIST) for r in runs])
                 if multitensor.LIST in names else None)
        out[name] = (Figure.of([r.median(name) for r in runs]), ratio)
    return out, [r.inner for r in runs]


def table(title: str, figures: dict, inner: list[int]) -> list[str]:
    blocks = "-" if not inner else "-".join(sorted({str(min(inner)), str(max(inner))}))
    lines = [f"**{title}** (calls per block: {blocks})", "",
             "| contender | median us | spread | time / fusedopt list |", "|---|---:|---:|---:|"]
    for name, (t, ratio) in figures.items():
        r = "-" if ratio is None else mark(f"{ratio.median:.2f}", ratio)
        lines.append(f"| {name} | {mark(f'{t.median * 1e6:,.1f}', t)} | {spread_text(t)} "
                     f"| {r} |")
    return lines + [""]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    method = SAME_PROCESS if args.same_process else ISOLATED
    sizes = multitensor.model_sizes(args.vectors, args.matrices, args.scale)
    small = [max(1, int(args.small))]
    notes: list[str] = []
    with Pool() as pool:
        many, many_inner = measure(sizes, method, args.rounds, args.repeats_of_sweep, pool,
                                   notes)
        one, one_inner = measure(small, method, args.rounds, args.repeats_of_sweep, pool,
                                 notes)
        processes = pool.describe() if method == ISOLATED else {"this": describe_process()}
    described = machine.describe(torch_threads=method == SAME_PROCESS)
    words = ("each contender in a worker process of its own" if method == ISOLATED else
             "every contender in this one process")
    lines = [
        "```",
        " ".join(["python benchmarks/bench_multitensor.py", *map(shlex.quote, argv)]),
        "```",
        "",
        machine_line(described),
        "",
        f"Method: {method} ({words}); {args.repeats_of_sweep} repeats x {args.rounds} "
        "interleaved rounds; median across repeats of each repeat's median; spread = "
        "(max - min) / median across repeats; ratios taken within each repeat.",
        "",
        *table(f"{len(sizes)} tensors, {sum(sizes):,} elements (seed {multitensor.SEED})",
               many, many_inner),
        *table(f"Per-step overhead: one tensor of {small[0]:,} elements", one, one_inner),
        LEGEND + ".",
        "",
    ]
    threads = {k: v.get("torch_threads") for k, v in processes.items() if "torch_threads" in v}
    if threads:
        lines.append(f"torch threads: {threads}.")
    lines += [f"Note: {n}" for n in notes]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
