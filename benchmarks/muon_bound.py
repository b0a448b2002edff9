"""How fast a Muon step on this CPU can be: the Newton-Schulz products' floating-point work
against the fastest bfloat16 matmul rate this machine reaches, beside torch.optim.Muon's step.

    PYTHONPATH=. flock -x /tmp/fusedopt-quiet.lock python benchmarks/muon_bound.py [--rounds 5]

Newton-Schulz (5 iterations, as torch.optim.Muon and fusedopt run it) on an m x n update
with m <= n (a tall one is iterated transposed) costs per iteration A = X X^T (2 m^2 n
flops), B = b A + c A A (2 m^3) and X = a X + B X (2 m^2 n): 5 (4 m^2 n + 2 m^3) flops.
The element passes (momentum, the weight step) move a few bytes per element and take about
5% of the step (RESULTS.md), so the step cannot be shorter than that work done at the
machine's best bfloat16 matmul rate. The rate is measured, not assumed: the best of
``--rounds`` timings of square products (1024 to 4096) and of the step's own products,
one at a time and stacked as fusedopt stacks them (``bmm``). torch.optim.Muon's step is
timed in the same process, between the rate measurements.

Prints a JSON line: the flops, each rate, torch's median step, the shortest possible step
and the largest speed-up over torch any implementation could reach here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_muon import shapes  # noqa: E402

NS_STEPS = 5


def ns_flops(m: int, n: int) -> int:
    m, n = min(m, n), max(m, n)
    return NS_STEPS * (4 * m * m * n + 2 * m ** 3)


def best_rate(torch, make, flops: float, rounds: int, calls: int = 3) -> float:
    """flop/s of the fastest of ``rounds`` timings of ``calls`` calls of ``make()``."""
    make()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            make()
        best = min(best, (time.perf_counter() - start) / calls)
    return flops / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import torch
    torch.manual_seed(0)
    bf = torch.bfloat16
    rates = {}
    for size in (1024, 2048, 4096):
        a, b = torch.randn(size, size, dtype=bf), torch.randn(size, size, dtype=bf)
        rates[f"mm {size}^3"] = best_rate(torch, lambda: a @ b, 2.0 * size ** 3, args.rounds)
    d = 256
    for n in (d, 3 * d, 4 * d):
        x = torch.randn(d, n, dtype=bf)
        stack = torch.randn(4, d, n, dtype=bf)
        rates[f"mm ({d},{n})x({n},{d})"] = best_rate(
            torch, lambda: x @ x.mT, 2.0 * d * d * n, args.rounds, calls=20)
        rates[f"bmm 4x({d},{n})x({n},{d})"] = best_rate(
            torch, lambda: torch.bmm(stack, stack.mT), 8.0 * d * d * n, args.rounds, calls=20)

    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes()]
    for p in params:
        p.grad = torch.randn(p.shape)
    opt = torch.optim.Muon(params, lr=0.02, weight_decay=0.01)
    times = []
    for i in range(2 + args.steps):
        start = time.perf_counter()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    flops = sum(ns_flops(*s) for s in shapes())
    peak = max(rates.values())
    torch_step = statistics.median(times)
    shortest = flops / peak
    print(json.dumps({
        "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
        "ns_gflop_per_step": flops / 1e9,
        "rates_gflops": {k: round(v / 1e9, 1) for k, v in rates.items()},
        "peak_gflops": round(peak / 1e9, 1),
        "torch_step_ms": round(torch_step * 1e3, 2),
        "torch_ns_gflops": round(flops / torch_step / 1e9, 1),
        "shortest_step_ms": round(shortest * 1e3, 2),
        "largest_speedup_over_torch": round(torch_step / shortest, 2)}))


if __name__ == "__main__":
    main()
