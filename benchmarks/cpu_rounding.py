"""CPU Adam on bfloat16 params: stochastic rounding and Kahan summation against plain
bfloat16, and Kahan against its own traffic ceiling.

Contenders (each in a process of its own, driven round by round in a rotating order, as
benchmarks/cpu_storage.py does): Adam on bf16 params with fp32 state, rounded to nearest
(``plain``, 22 B/element), with ``stochastic_rounding=True`` (the same bytes), with
``kahan_summation=True`` (26 B/element: a bf16 compensation read and written), and the
traffic ceilings of the plain and the Kahan storage (the same loop, table, loads and stores
with trivial math; fusedopt/tools/bench/traffic.py; Kahan's keeps the slot's add and store).
Targets: stochastic <= 1.1x plain's time; Kahan >= 0.9 of its ceiling's speed. Prints
markdown for benchmarks/RESULTS.md.

    flock -x /tmp/fusedopt-quiet.lock python benchmarks/cpu_rounding.py
    python benchmarks/cpu_rounding.py --sizes 2^16 --rounds 3   # smoke
"""

from __future__ import annotations

import sys

# The driver and the workers' loop are cpu_storage.py's (this script's folder is on the path).
from cpu_storage import batch, contender_rows, ratios, serve, sized_main

#: contender -> (kind, Adam's storage arguments)
CONTENDERS = {
    "plain bf16": ("fused", {}),
    "stochastic rounding": ("fused", {"stochastic_rounding": True}),
    "Kahan summation": ("fused", {"kahan_summation": True}),
    "plain ceiling": ("ceiling", {}),
    "Kahan ceiling": ("ceiling", {"kahan_summation": True}),
}


def _step(kind: str, options: dict, n: int):
    import numpy as np

    import fusedopt
    from fusedopt.memory.group import step_storage
    from fusedopt.memory.storage import numpy_dtype
    from fusedopt.tools.bench.traffic import cpu_ceiling
    bf16 = numpy_dtype("bfloat16")
    rng = np.random.default_rng(0)
    param = (rng.standard_normal(n, dtype=np.float32) * 0.1).astype(bf16)
    grad = (rng.standard_normal(n, dtype=np.float32) * 0.01).astype(bf16)
    opt = fusedopt.Adam(learning_rate=1e-4, backend="cpu", **options)
    opt.apply_gradients([(grad, param)])
    if kind == "fused":
        return lambda: opt.apply_gradients([(grad, param)])
    storage = step_storage(opt._engine.launch_groups()[0].group, [grad])
    slots = [np.zeros(n, np.float32), np.zeros(n, np.float32)]
    if storage.master:
        slots.append(np.zeros(n, bf16))
    return cpu_ceiling(np.zeros(n, bf16), np.zeros(n, bf16), slots, storage=storage)


def _worker(conn, kind: str, options: dict, n: int) -> None:
    serve(conn, _step(kind, options, n))


def _bytes(options: dict) -> int:
    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.memory.storage import Storage
    from fusedopt.tools.bench.traffic import traffic
    spec = REGISTRY["adam"]
    mode = "kahan" if options.get("kahan_summation") else (
        "stochastic" if options.get("stochastic_rounding") else "plain")
    flow = traffic(spec, spec.flags(spec.defaults(), "keras"),
                   Storage("bfloat16", "bfloat16", "float32", mode))
    return flow.read_bytes + flow.write_bytes


def table(n: int, times: dict, steps: int | None = None) -> list[str]:
    k = batch(n, steps)
    lines = [f"**Adam, bf16 params, fp32 state, {n:,} elements** ({k} step"
             f"{'s' if k > 1 else ''} per sample)", ""]
    lines += contender_rows(n, times, lambda name: _bytes(CONTENDERS[name][1]), "plain bf16")
    sr = ratios(times["stochastic rounding"], times["plain bf16"])
    kahan = ratios(times["Kahan ceiling"], times["Kahan summation"])
    plain_c = ratios(times["plain ceiling"], times["plain bf16"])
    lines += ["", f"Per-round stochastic / plain time: median {sr[0]:.3f} (min {sr[1]:.3f}, "
              f"max {sr[2]:.3f}); target <= 1.1.",
              f"Per-round Kahan's fraction of its ceiling's speed (ceiling time / Kahan time): "
              f"median {kahan[0]:.3f} (min {kahan[1]:.3f}, max {kahan[2]:.3f}); target >= 0.9.",
              f"Plain bf16's fraction of its ceiling: median {plain_c[0]:.3f}.", ""]
    return lines


def main(argv=None) -> int:
    return sized_main(argv, title="CPU Adam, stochastic rounding and Kahan summation",
                      script="cpu_rounding.py", rounds=21, contenders=CONTENDERS,
                      worker=_worker, table=table)


if __name__ == "__main__":
    sys.exit(main())
