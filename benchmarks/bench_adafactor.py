"""Adafactor steps on the CPU: fusedopt.torch.Adafactor against torch.optim.Adafactor
(foreach, and its default single-tensor loop), float32, one param of ``--rows`` x
``--cols`` (default 4096 x 4096: 16M elements) and its 4096-element bias.

    PYTHONPATH=. flock -x /tmp/fusedopt-quiet.lock python benchmarks/bench_adafactor.py \
        [--rows 4096] [--cols 4096] [--rounds 7] [--calls 5]

Each contender lives in a process of its own (its own imports, threads and allocator),
made and warmed once; the rounds are interleaved: in each round every worker, in turn, runs
``--calls`` steps and reports their mean time. Medians over rounds. fusedopt's step of a
factored float32 param moves, from the formula ``bytes = n * (read + write)``:

    factor pass     reads g                          4
    reduction pass  reads theta, g                   8
    element pass    reads theta, g, writes theta     8 + 4   = 24 bytes per element

(fusedopt/algorithms/adafactor.py says why that is the fewest); the figure printed is
those bytes over the step's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

F32 = 4
#: Bytes per element of a factored float32 step: (read, write) of each pass.
PASSES = {"factor": (1 * F32, 0), "reduction": (2 * F32, 0), "element": (2 * F32, 1 * F32)}
CONTENDERS = ("fusedopt", "torch-foreach", "torch-single")


def worker(name: str, rows: int, cols: int) -> None:
    if name == "fusedopt":
        import fusedopt.torch  # noqa: F401 - first, as its README says (one OpenMP pool)
    import torch
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(rows, cols))
    b = torch.nn.Parameter(torch.randn(cols))
    w.grad, b.grad = torch.randn(rows, cols), torch.randn(cols)
    if name == "fusedopt":
        import fusedopt.torch as ft
        opt = ft.Adafactor([w, b], lr=1e-2)
    else:
        opt = torch.optim.Adafactor([w, b], lr=1e-2, foreach=name == "torch-foreach")
    for _ in range(3):  # compile, allocate, settle
        opt.step()
    print(json.dumps({"ready": name, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        calls = int(line)
        start = time.perf_counter()
        for _ in range(calls):
            opt.step()
        print(json.dumps({"seconds": (time.perf_counter() - start) / calls}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.rows, args.cols)
    procs = {}
    for name in CONTENDERS:
        procs[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--rows", str(args.rows),
             "--cols", str(args.cols)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        print(procs[name].stdout.readline().strip())  # made and warmed, one at a time
    times = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):
        for name, proc in procs.items():
            proc.stdin.write(f"{args.calls}\n")
            proc.stdin.flush()
            times[name].append(json.loads(proc.stdout.readline())["seconds"])
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    n = args.rows * args.cols
    moved = n * sum(r + w for r, w in PASSES.values())
    ours = statistics.median(times["fusedopt"])
    print(f"\n{args.rows} x {args.cols} float32 (+ a {args.cols} bias), medians of "
          f"{args.rounds} rounds of {args.calls} steps, interleaved, one process each")
    print("| contender | ms per step (median) | min | max | vs fusedopt |")
    print("|---|---:|---:|---:|---:|")
    for name, seen in times.items():
        median = statistics.median(seen)
        print(f"| {name} | {median * 1e3:.1f} | {min(seen) * 1e3:.1f} | "
              f"{max(seen) * 1e3:.1f} | {median / ours:.2f}x |")
    print(f"\nfusedopt: {moved / ours / 1e9:.1f} GB/s of its {moved / n:.0f} bytes per "
          "element")


if __name__ == "__main__":
    main()
