"""Many tensors in one step: fusedopt's list path, a flat arena, torch's fused Adam; overhead.

Two cases, each timed interleaved round by round in one run (float32 Adam on the CPU):

- a transformer-like model: ``--vectors`` vectors of 1k-4k elements and ``--matrices``
  matrices of 0.25M-1M elements (defaults 170 and 30, about 20M elements), sizes drawn with
  a fixed seed and shuffled. Contenders: ``apply_gradients`` over the arrays;
  ``torch.optim.Adam(fused=True)`` over the same number of tensors of the same sizes; one
  ``apply_gradients`` over a single flat array of the same total size; the
  :class:`fusedopt.FlatParams` arena step.
- per-step overhead: one tensor of ``--small`` elements (default 1,000), fusedopt against
  torch's fused Adam.

``--scale`` multiplies every size (smoke tests use a tiny one). Prints a markdown block for
benchmarks/RESULTS.md: the command, the machine, medians, spreads and ratios.

    python benchmarks/bench_multitensor.py
    python benchmarks/bench_multitensor.py --scale 0.001 --repeats 2   # smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fusedopt
from fusedopt._bench import machine, timing

#: Element counts of the model's two kinds of tensors (inclusive ranges).
VECTOR_SIZES = (1024, 4096)
MATRIX_SIZES = (262_144, 1_048_576)
SEED = 0
#: One hyperparameter set for every contender (torch's formulas on both sides).
HYPER = dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8)

LIST, TORCH, FLAT, ARENA = "fusedopt list", "torch fused", "fusedopt one buffer", "FlatParams"


@dataclass
class Contender:
    name: str
    step: Callable[[], object]


def model_sizes(vectors: int, matrices: int, scale: float, seed: int = SEED) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([rng.integers(VECTOR_SIZES[0], VECTOR_SIZES[1] + 1, vectors),
                            rng.integers(MATRIX_SIZES[0], MATRIX_SIZES[1] + 1, matrices)])
    rng.shuffle(sizes)
    return [max(1, int(s * scale)) for s in sizes]


def _fusedopt_list(sizes, rng) -> Contender:
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    pairs = [(rng.standard_normal(n).astype(np.float32), p) for n, p in zip(sizes, params)]
    opt = fusedopt.Adam(**HYPER, convention="torch")
    return Contender(LIST, lambda: opt.apply_gradients(pairs))


def _flat_buffer(sizes, rng) -> Contender:
    n = int(sum(sizes))
    pairs = [(rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32))]
    opt = fusedopt.Adam(**HYPER, convention="torch")
    return Contender(FLAT, lambda: opt.apply_gradients(pairs))


def _arena(sizes, rng) -> Contender:
    arena = fusedopt.FlatParams([int(n) for n in sizes])
    arena.adopt([rng.standard_normal(n).astype(np.float32) for n in sizes])
    for g in arena.grads:
        g[...] = rng.standard_normal(g.shape)
    opt = fusedopt.Adam(**HYPER, convention="torch")
    return Contender(ARENA, lambda: arena.step(opt))


def _torch(sizes, rng, notes: list[str]) -> Contender | None:
    try:
        import torch
    except ImportError:
        notes.append("torch is not installed: no torch contender")
        return None
    params = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)).requires_grad_()
              for n in sizes]
    for p in params:
        p.grad = torch.from_numpy(rng.standard_normal(p.numel()).astype(np.float32))
    opt = torch.optim.Adam(params, lr=HYPER["learning_rate"],
                           betas=(HYPER["beta_1"], HYPER["beta_2"]), eps=HYPER["epsilon"],
                           fused=True)
    return Contender(TORCH, opt.step)


def measure(contenders: list[Contender], repeats: int, notes: list[str]) -> dict:
    sync = timing.synchronizer("cpu")
    kept, first = timing.warm_up(contenders, sync, notes)
    inner = timing.inner_calls(first)
    samples = timing.interleave(kept, repeats, inner, sync)
    return {name: timing.Summary.of(s) for name, s in samples.items()}


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def table(title: str, summaries: dict, baseline: str) -> list[str]:
    lines = [f"**{title}**", "", "| contender | median us | IQR us | time / " + baseline + " |",
             "|---|---:|---:|---:|"]
    base = summaries.get(baseline)
    for name, s in summaries.items():
        ratio = "-" if base is None else f"{s.median / base.median:.2f}"
        lines.append(f"| {name} | {_us(s.median)} | {_us(s.q3 - s.q1)} | {ratio} |")
    return lines + [""]


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=170)
    parser.add_argument("--matrices", type=int, default=30)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=15)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    sizes = model_sizes(args.vectors, args.matrices, args.scale)
    rng = np.random.default_rng(SEED + 1)
    notes: list[str] = []
    many = [_fusedopt_list(sizes, rng), _torch(sizes, rng, notes), _flat_buffer(sizes, rng),
            _arena(sizes, rng)]
    many_summary = measure([c for c in many if c is not None], args.repeats, notes)
    small = [max(1, int(args.small))]
    one = [_fusedopt_list(small, rng), _torch(small, rng, [])]
    one_summary = measure([c for c in one if c is not None], args.repeats, notes)

    described = machine.describe()
    versions, numba = described["versions"], described["numba"]
    lines = [
        "### Many tensors, one step: float32 Adam on the CPU",
        "",
        "```",
        " ".join(["python benchmarks/bench_multitensor.py", *map(shlex.quote, argv)]),
        "```",
        "",
        f"Machine: {described['cpu_model']}, {described['cpu_cores']} logical cores; "
        f"numba {versions['numba']} ({numba['threading_layer']} layer, {numba['threads']} "
        f"threads), torch {versions.get('torch')} ({described.get('torch_threads', '-')} "
        f"threads), numpy {versions['numpy']}. Medians of {args.repeats} interleaved rounds; "
        "IQR = interquartile range.",
        "",
        *table(f"{len(sizes)} tensors, {sum(sizes):,} elements (seed {SEED})", many_summary,
               LIST),
        *table(f"Per-step overhead: one tensor of {small[0]:,} elements", one_summary, LIST),
    ]
    lines += [f"Note: {n}" for n in notes]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
