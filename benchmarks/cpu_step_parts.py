"""The parts of fusedopt.torch.Adam's step on one small float32 tensor, each timed alone.

Each part is called back to back (``--calls`` times, ``--repeats`` repeats) in one process
after a warm-up, with the same optimizer and grads, and its best and median repeat are
printed in us per call. A part timed alone runs with warm caches, so the parts add up to
less than the whole step; they say where the time goes, not what a step costs (the step
itself: benchmarks/cpu_step_probe.py, benchmarks/cpu_contention.py). torch's fused step is
timed in the same process for scale.

    python benchmarks/cpu_step_parts.py              # 2^10 elements, torch's threads
    python benchmarks/cpu_step_parts.py --n 4096 --threads 1

The parts reach into fusedopt's internals (the door's grad gathering and step counters,
the engine's phases, the CPU backend's call): a diagnostic, not an API.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import fusedopt.torch as ft
from fusedopt.backends.cpu import backend as cpu_backend
from fusedopt.backends.cpu import loop
from fusedopt.backends.cpu import threads as cpu_threads
from fusedopt.torch import _compile


def parts(n: int) -> dict:
    p = torch.zeros(n, requires_grad=True)
    p.grad = torch.randn(n)
    opt = ft.Adam([p], lr=1e-3)
    q = torch.zeros(n, requires_grad=True)
    q.grad = torch.randn(n)
    ref = torch.optim.Adam([q], lr=1e-3, fused=True)
    for _ in range(100):
        opt.step()
        ref.step()
    engine = opt._engine
    ((grads, positions),) = opt._gather()
    positions = tuple(positions)
    plan, work, launches = engine._plan_step(positions, grads)
    launch, g = work[0]
    flags = engine.hypers[launch.hyper].flags
    row = engine._scalars(launch.hyper, launch.decays, engine._steps[positions[0]] + 1)
    chosen = launch.group.scratch[(engine.spec.name, flags, g[0].dtype, False)].chosen
    table = launch.group.table.array
    rows = loop._rows(row)
    span = loop.span_function(chosen, rows.shape[1])
    group = launch.group

    def engine_step():
        with cpu_threads.following(torch.get_num_threads()):
            engine.step(grads, positions)

    return {
        "torch fused: opt.step()": ref.step,
        "fusedopt: opt.step()": opt.step,
        "  the door's step, no torch wrapper": lambda: _compile.step(opt),
        "    gather the grads": opt._gather,
        "    engine.step": engine_step,
        "      plan (grad layout test, launches)": lambda: engine._plan_step(positions, grads),
        "      the plain step's check of its launches": lambda: engine._holds(engine._kept,
                                                                          grads),
        "      scalars (computed, checked)": lambda: engine._scalar_phase(positions, work,
                                                                         None),
        "      CPU backend step": lambda: cpu_backend.step(engine.spec, flags, row, group, g,
                                                       step=5),
        "        loop.run_serial": lambda: loop.run_serial(chosen, table, 1, group.chunk, row,
                                                           np.int64(5)),
        "          the Numba call": lambda: loop._run_serial(span.address, table, 1,
                                                              group.chunk, chosen.geometry,
                                                              rows, np.int64(5)),
        "    advance the step counters": lambda: opt._advance(positions),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.n} elements, torch threads {torch.get_num_threads()}, best and median of "
          f"{args.repeats} repeats of {args.calls} calls, us per call")
    for name, call in parts(args.n).items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter_ns()
            for _ in range(args.calls):
                call()
            times.append((time.perf_counter_ns() - start) / args.calls / 1e3)
        print(f"{name:42s} {min(times):7.2f} {statistics.median(times):7.2f}")


if __name__ == "__main__":
    main()
