"""Muon on the 2-D params of a 4-layer, 256-wide transformer (about 3.1M params): a
fusedopt.torch.Muon step against a torch.optim.Muon step on the same tensors, CPU, float32.

    PYTHONPATH=. flock -x /tmp/fusedopt-quiet.lock python benchmarks/bench_muon.py \\
        [--rounds 6] [--steps 10]

Per layer (d = 256, feed-forward 4d): the attention's input projection (3d, d), its output
projection (d, d), and the feed-forward's (4d, d) and (d, 4d): 16 matrices, 4 of each shape.
torch.optim.Muon runs Newton-Schulz one matrix at a time; fusedopt stacks the matrices of a
shape and runs each product as one batched matmul (fusedopt/engine/orthogonal.py), both in
bfloat16 with the same ops (their results agree bit for bit: tests/test_muon.py).

Method: each contender in a process of its own (``--worker``), the two alternating round by
round (the first of each round alternating too); in each process 2 warm-up steps, then
``--steps`` timed steps; per process the median step; reported: the median over rounds and
the spread (min-max) of the per-process medians, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

D, LAYERS = 256, 4


def shapes() -> list[tuple[int, int]]:
    return [s for _ in range(LAYERS) for s in ((3 * D, D), (D, D), (4 * D, D), (D, 4 * D))]


def worker(which: str, steps: int) -> list[float]:
    if which == "fused":
        import fusedopt.torch  # before torch: one OpenMP pool (README, "Threads")
    import torch
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes()]
    grads = [torch.randn(s) for s in shapes()]
    cls = fusedopt.torch.Muon if which == "fused" else torch.optim.Muon
    opt = cls(params, lr=0.02, weight_decay=0.01)
    for p, g in zip(params, grads):
        p.grad = g
    times = []
    for i in range(2 + steps):
        start = time.perf_counter()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker", choices=("fused", "torch"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps)))
        return
    medians: dict[str, list[float]] = {"fused": [], "torch": []}
    for r in range(args.rounds):
        for which in (("fused", "torch") if r % 2 == 0 else ("torch", "fused")):
            out = subprocess.run([sys.executable, __file__, "--worker", which, "--steps",
                                  str(args.steps)], check=True, capture_output=True,
                                 text=True, env=os.environ)
            medians[which].append(statistics.median(json.loads(out.stdout.splitlines()[-1])))
    n = sum(a * b for a, b in shapes())
    print(f"{len(shapes())} matrices, {n} params; load average at the end "
          f"{os.getloadavg()[0]:.1f}; torch threads: see README 'Threads'")
    for which, ms in medians.items():
        print(f"{which:6s} median {1e3 * statistics.median(ms):8.2f} ms  spread "
              f"{1e3 * min(ms):.2f}..{1e3 * max(ms):.2f} ms over {len(ms)} processes")
    print(f"speed-up (torch median / fused median): "
          f"{statistics.median(medians['torch']) / statistics.median(medians['fused']):.2f}x")


if __name__ == "__main__":
    main()
