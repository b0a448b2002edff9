"""CPU Adam with ``use_ema``: the moving average in the step's own pass against the separate
pass after the step, and against the traffic ceiling of its bytes.

Contenders (each in a process of its own, driven round by round in a rotating order, as
benchmarks/cpu_storage.py does), float32 params:

- ``Adam``: no average (28 B/element: param, grad and two moments, read and written);
- ``use_ema, fused``: the average updated in the step's pass from the param in registers
  (36 B/element: the average read and written besides);
- ``use_ema, separate pass``: the same optimizer with the CPU backend told not to fuse it
  (``fusedopt.backends.cpu.backend.FUSED_AVERAGE = False``), so the average is
  ``fusedopt.engine.ema.MovingAverage.update``'s two NumPy expressions after the step (28 more
  B/element: ``average *= m`` moves 8, ``average += param * (1 - m)`` 20 with the
  product's temporary; NumPy runs them on one thread);
- ``36 B ceiling``: the fused step's loop, table and loads and stores with trivial math,
  over three slots (fusedopt/tools/bench/traffic.py): the same 36 bytes per element.

Prints markdown for benchmarks/RESULTS.md.

    flock -x /tmp/fusedopt-quiet.lock python benchmarks/cpu_average.py
    python benchmarks/cpu_average.py --sizes 2^16 --rounds 3   # smoke
"""

from __future__ import annotations

import sys

# The driver and the workers' loop are cpu_storage.py's (this script's folder is on the path).
from cpu_storage import batch, contender_rows, ratios, serve, sized_main

#: contender -> (kind, bytes per element)
CONTENDERS = {
    "Adam": ("plain", 28),
    "use_ema, fused": ("fused", 36),
    "use_ema, separate pass": ("separate", 56),
    "36 B ceiling": ("ceiling", 36),
}


def _step(kind: str, n: int):
    import numpy as np

    import fusedopt
    from fusedopt.backends.cpu import backend
    from fusedopt.tools.bench.traffic import cpu_ceiling

    rng = np.random.default_rng(0)
    if kind == "ceiling":
        slots = [np.zeros(n, np.float32) for _ in range(3)]
        return cpu_ceiling(np.zeros(n, np.float32), np.zeros(n, np.float32), slots)
    if kind == "separate":
        backend.FUSED_AVERAGE = False  # this process only: the engine's pass after the step
    param = rng.standard_normal(n, dtype=np.float32) * 0.1
    grad = rng.standard_normal(n, dtype=np.float32) * 0.01
    opt = fusedopt.Adam(learning_rate=1e-4, backend="cpu", use_ema=kind != "plain")
    opt.apply_gradients([(grad, param)])
    group = opt._engine.launch_groups()[0].group
    assert group.averaged == (kind == "fused"), "the contender is not what it says"
    return lambda: opt.apply_gradients([(grad, param)])


def _worker(conn, kind: str, n: int) -> None:
    serve(conn, _step(kind, n))


def table(n: int, times: dict, steps: int | None = None) -> list[str]:
    k = batch(n, steps)
    lines = [f"**Adam with use_ema, float32, {n:,} elements** ({k} step"
             f"{'s' if k > 1 else ''} per sample)", ""]
    lines += contender_rows(n, times, lambda name: CONTENDERS[name][1], "Adam")
    fused = ratios(times["use_ema, fused"], times["use_ema, separate pass"])
    ceiling = ratios(times["36 B ceiling"], times["use_ema, fused"])
    lines += ["", f"Per-round fused / separate-pass time: median {fused[0]:.3f} "
              f"(min {fused[1]:.3f}, max {fused[2]:.3f}).",
              f"Per-round fused fraction of its ceiling's speed (ceiling time / fused time): "
              f"median {ceiling[0]:.3f} (min {ceiling[1]:.3f}, max {ceiling[2]:.3f}).", ""]
    return lines


def main(argv=None) -> int:
    return sized_main(argv, title="CPU Adam with use_ema: the average fused into the step",
                      script="cpu_average.py", rounds=15, worker=_worker, table=table,
                      contenders={name: (kind,) for name, (kind, _) in CONTENDERS.items()})


if __name__ == "__main__":
    sys.exit(main())
