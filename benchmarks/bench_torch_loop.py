"""The optimizer step timed inside a real torch CPU training loop (forward, backward, step).

A model of 100 residual Linear blocks (200 tensors, ~20M params), batch 32, cross-entropy. Each
contender runs in its own process (Numba's and torch's thread pools are per process) and
the processes take turns, round by round in rotating order, each running ``--steps`` loop
iterations per turn while the others wait on their pipe:

- ``fusedopt``: fusedopt.torch.Adam, the step timed inside the loop (fusedopt.torch
  imported first: one OpenMP runtime, fusedopt/torch/_threads.py);
- ``fusedopt, torch first``: the same with torch imported before fusedopt.torch (two
  OpenMP runtimes in the process);
- ``fusedopt alone``: the same process and step with torch idle: one forward and backward,
  then the steps back to back (the issue's "step alone": no torch work between steps);
- ``torch fused``: torch.optim.Adam(fused=True), timed the same way;
- ``ceiling``: the traffic ceiling (fusedopt/tools/bench/traffic.py's rule: Adam's bytes, trivial
  math) over the same tensors through the same Numba loop, inside the loop.

    python benchmarks/bench_torch_loop.py                  # the RESULTS.md figures
    python benchmarks/bench_torch_loop.py --rounds 2 --steps 2 --layers 4   # smoke test

Prints a markdown block: command, machine, medians, IQRs, ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

CONTENDERS = ("fusedopt", "fusedopt alone", "fusedopt, torch first", "torch fused", "ceiling")
#: Which worker process runs a contender (the alone variant shares fusedopt's).
WORKER = {"fusedopt": "fusedopt", "fusedopt alone": "fusedopt",
          "fusedopt, torch first": "torch-first", "torch fused": "torch fused",
          "ceiling": "ceiling"}
BYTES_PER_ELEMENT = 16 + 12  # Adam float32: reads p, g, m, v; writes p, m, v


# --- a worker: one process, one optimizer ---------------------------------------------------

def _model(layers: int, width: int):
    """``layers`` residual blocks ``x + 0.1 relu(W x + b)``: a plain stack of 100 ReLU
    layers has vanishing grads (most exactly zero, the rest subnormal, which makes any
    CPU optimizer's g*g crawl); the residual path keeps every grad in range."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(width, width)

        def forward(self, x):
            return x + 0.1 * torch.relu(self.linear(x))

    torch.manual_seed(0)
    return torch.nn.Sequential(*(Block() for _ in range(layers)))


def _ceiling_step(params):
    """The traffic ceiling over ``params`` with two state tensors each, reading this
    step's grads."""
    import torch

    from fusedopt.backends.cpu import backend
    from fusedopt.backends.cpu.loop import Variant, run
    from fusedopt.backends.cpu.storage import F32
    from fusedopt.memory import torch_kind as _torch_kind
    from fusedopt.memory.group import step_table
    from fusedopt.tools.bench.traffic import CEILING_SCALE, CeilingScalars, ceiling_rule
    _torch_kind.register()
    states = [[torch.zeros_like(p), torch.zeros_like(p)] for p in params]
    group = backend.group("float32", [p.detach() for p in params], states)
    rule = Variant(ceiling_rule, CeilingScalars, (2,), 2, (F32,) * 3, 0,
                   clamps=False)  # two slots, float32, no clip
    h = (float(CEILING_SCALE),)

    def step():
        table = step_table(group, [p.grad for p in params], backend.address)
        run(rule, table, group.table.n_tensors, group.chunk, h, np.int64(1))
    return step


def worker(name: str, layers: int, width: int, batch: int) -> None:
    if name == "torch-first":
        import torch  # noqa: F401  (before fusedopt.torch: two OpenMP runtimes)
    import torch

    import fusedopt.torch as ft
    model = _model(layers, width)
    params = list(model.parameters())
    x, y = torch.randn(batch, width), torch.randint(0, width, (batch,))
    if name in ("fusedopt", "torch-first"):
        step = ft.Adam(params, lr=1e-4).step
    elif name == "torch fused":
        step = torch.optim.Adam(params, lr=1e-4, fused=True).step
    else:
        step = _ceiling_step(params)
    info = {"params": sum(p.numel() for p in params), "tensors": len(params),
            "torch_threads": torch.get_num_threads(), "fusedopt_threads": ft.THREADS}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        command, steps = line.split()
        times = []
        for k in range(int(steps)):
            if command == "run" or k == 0:  # "alone": torch works once, then stays idle
                for p in params:
                    p.grad = None
                torch.nn.functional.cross_entropy(model(x), y).backward()
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


# --- the parent: interleaved rounds --------------------------------------------------------

def _start(name: str, args) -> tuple:
    command = [sys.executable, __file__, "--worker", name, "--layers", str(args.layers),
               "--width", str(args.width), "--batch", str(args.batch)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())


def _ask(proc, command: str, steps: int) -> list:
    proc.stdin.write(f"{command} {steps}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def measure(args) -> tuple[dict, dict]:
    workers = {name: _start(name, args) for name in sorted(set(WORKER.values()))}
    info = dict(workers["fusedopt"][1], torch_first=workers["torch-first"][1])
    samples = {name: [] for name in CONTENDERS}
    for name in CONTENDERS:  # warm-up: compile, build state
        _ask(workers[WORKER[name]][0], "alone" if "alone" in name else "run", 2)
    for r in range(args.rounds):
        order = CONTENDERS[r % len(CONTENDERS):] + CONTENDERS[:r % len(CONTENDERS)]
        for name in order:
            proc = workers[WORKER[name]][0]
            samples[name] += _ask(proc, "alone" if "alone" in name else "run", args.steps)
    for proc, _ in workers.values():
        proc.stdin.close()
        proc.wait(timeout=60)
    return samples, info


def markdown(samples: dict, info: dict, argv) -> str:
    import numba
    import torch
    n = info["params"]
    stats = {k: np.percentile(np.array(v) * 1e3, [25, 50, 75]) for k, v in samples.items()}
    med = {k: s[1] for k, s in stats.items()}
    lines = [
        "### The Adam step inside a torch CPU training loop",
        "",
        "```",
        " ".join(["python benchmarks/bench_torch_loop.py", *map(shlex.quote, argv)]).strip(),
        "```",
        "",
        f"Machine: {os.cpu_count()} logical cores; torch {torch.__version__} "
        f"({info['torch_threads']} threads), numba {numba.__version__}; fusedopt.torch set "
        f"{info['fusedopt_threads']} (torch first: "
        f"{info['torch_first']['fusedopt_threads']}). Model: {info['tensors']} tensors, "
        f"{n:,} params (float32). {len(next(iter(samples.values())))} steps per contender, "
        "interleaved in rounds, each contender in its own process.",
        "",
        "| contender | median ms | IQR ms | GB/s | time / torch fused | time / fusedopt alone |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        q1, m, q3 = stats[name]
        gbs = n * BYTES_PER_ELEMENT / (m * 1e-3) / 1e9
        lines.append(f"| {name} | {m:.2f} | {q3 - q1:.2f} | {gbs:.1f} | "
                     f"{m / med['torch fused']:.2f} | {m / med['fusedopt alone']:.2f} |")
    lines += ["", f"Bytes per step: n * {BYTES_PER_ELEMENT} (Adam float32: 16 read + 12 "
              "written). \"ceiling\": the same bytes with trivial math, same loop, inside the "
              "training loop."]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.layers, args.width, args.batch)
        return
    samples, info = measure(args)
    print(markdown(samples, info, argv))


if __name__ == "__main__":
    main()
