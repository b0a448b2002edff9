"""Where a fusedopt.torch.Muon step's time goes: the step of benchmarks/bench_muon.py (the
16 matrices of a 4-layer, 256-wide transformer, CPU, float32), each phase timed inside one
process.

    PYTHONPATH=. flock -x /tmp/fusedopt-quiet.lock python benchmarks/muon_phases.py \\
        [--steps 20]

Phases: the two element passes (the backend's ``step``: momentum, then the weight step),
and each operation of the Newton-Schulz namespace (fusedopt/backends/matmul.py) the
transform calls: ``mm`` (``bmm``), ``add_mm`` (``baddbmm``), ``cast`` (the update to a
bfloat16 stack), ``norms``, ``divide``, ``store`` (the result back into the float32 stack)
and the rest. Each is wrapped in a timer (``time.perf_counter`` around the call, which
returns once the work is done: the CPU ops are synchronous); "rest" is the step's time
outside them (the engine's Python, the scalar rows). 3 warm-up steps, then ``--steps``
timed ones; prints each phase's mean per step and its share of the step.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import fusedopt.torch  # noqa: E402  before torch: one OpenMP pool (README, "Threads")
import torch  # noqa: E402
from bench_muon import shapes  # noqa: E402

import fusedopt.backends.cpu.backend as cpu_backend  # noqa: E402
import fusedopt.engine.orthogonal as orthogonal  # noqa: E402

SPENT: dict[str, float] = collections.defaultdict(float)


def timed(name: str, call):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - start
    return run


class TimedOps:
    """The namespace of ``ops``, each call timed under its name."""

    def __init__(self, ops):
        self.ops = ops

    def __getattr__(self, name):
        value = getattr(self.ops, name)
        return timed(name, value) if callable(value) else value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    ops_for = orthogonal.ops_for
    orthogonal.ops_for = lambda *a: TimedOps(ops_for(*a))
    cpu_backend.step = timed("element passes", cpu_backend.step)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes()]
    for p in params:
        p.grad = torch.randn(p.shape)
    opt = fusedopt.torch.Muon(params, lr=0.02, weight_decay=0.01)
    for _ in range(3):
        opt.step()
    SPENT.clear()
    steps = []
    for _ in range(args.steps):
        start = time.perf_counter()
        opt.step()
        steps.append(time.perf_counter() - start)
    total = sum(steps)
    SPENT["rest"] = total - sum(SPENT.values())
    print(f"load average {os.getloadavg()[0]:.1f}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}; step mean {1e3 * total / args.steps:.2f} ms, "
          f"median {1e3 * statistics.median(steps):.2f} ms")
    for name, spent in sorted(SPENT.items(), key=lambda kv: -kv[1]):
        print(f"  {name:15s} {1e3 * spent / args.steps:7.2f} ms  {100 * spent / total:5.1f}%")


if __name__ == "__main__":
    main()
