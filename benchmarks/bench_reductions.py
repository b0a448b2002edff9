"""LAMB and StableAdamW steps (per-tensor reductions, then the element pass) against the
traffic ceiling of the passes they need, on the CPU, float32.

    PYTHONPATH=. flock -x /tmp/fusedopt-quiet.lock python benchmarks/bench_reductions.py \
        [--size 16777216] [--rounds 9]

A step of either is two passes over memory (fusedopt/engine/reductions.py): a read-only
reduction pass, then the element pass. The ceiling of each pass is a kernel that moves the
same bytes with trivial math: for the reduction, a parallel float64 sum of the arrays it
reads (``read_ceiling``); for the element pass, fusedopt's traffic ceiling
(fusedopt/tools/bench/traffic.py: the same loop, table and storage, ``theta += 0 * g``).
The ceiling of the step is the sum of the two; the fraction is ceiling time over step
time. Bytes per element, from the formula ``bytes = n * (read + write)``:

    LAMB         reduction reads p, g, m, v (16)     + element pass 16 + 12    = 44
    StableAdamW  reduction reads g, v (8)            + element pass 16 + 12    = 36

Contenders run interleaved, round by round (a block of ``--calls`` calls each), in this one
process, each on arrays of its own; medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit, prange

import fusedopt
from fusedopt import config
from fusedopt.tools.bench.traffic import cpu_ceiling

F32 = 4
#: Per element, bytes each pass reads and writes (float32).
PASSES = {"lamb": {"reduction": (4 * F32, 0), "update": (4 * F32, 3 * F32)},
          "stableadamw": {"reduction": (2 * F32, 0), "update": (4 * F32, 3 * F32)}}


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=False)
def _read_sum(a, b, c, d, chunk):
    """Sum of a + b + c + d in float64, chunk by chunk (d, c may be a again: read once)."""
    n = a.shape[0]
    chunks = -(-n // chunk)
    out = np.zeros(chunks)
    for k in prange(chunks):
        lo, hi = k * chunk, min(n, (k + 1) * chunk)
        ca, cb, cc, cd = a[lo:hi], b[lo:hi], c[lo:hi], d[lo:hi]
        acc = 0.0
        for i in range(hi - lo):  # indices from 0: vector loads (see _read_sum2)
            acc += np.float64(ca[i] + cb[i] + cc[i] + cd[i])
        out[k] = acc
    return out.sum()


@njit(parallel=True, fastmath={"reassoc", "contract"}, cache=False)
def _read_sum2(a, b, chunk):
    n = a.shape[0]
    chunks = -(-n // chunk)
    out = np.zeros(chunks)
    for k in prange(chunks):
        lo, hi = k * chunk, min(n, (k + 1) * chunk)
        ca, cb = a[lo:hi], b[lo:hi]
        acc = 0.0
        # Each chunk indexed from 0: an index not known to be >= 0 makes Numba wrap
        # negative ones, and the loop's loads become per-lane gathers.
        for i in range(hi - lo):
            acc += np.float64(ca[i] + cb[i])
        out[k] = acc
    return out.sum()


def read_ceiling(arrays):
    """A step that reads every array of ``arrays`` (2 or 4) once, summing in float64 in
    chunks as the reduction pass takes them, and writes nothing."""
    if len(arrays) == 4:
        def step():
            _read_sum(*arrays, config.CPU_CHUNK)
    else:
        def step():
            _read_sum2(*arrays, config.CPU_CHUNK)
    return step


def contenders(name: str, n: int) -> dict:
    """The fused step and its ceiling, each on arrays of its own (p, g, m, v: the ceiling's
    two passes read the same four, as the fused step's do)."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 0.1).astype(np.float32)
    opt = (fusedopt.Lamb if name == "lamb" else fusedopt.StableAdamW)(learning_rate=1e-4)
    opt.apply_gradients([(g, p)])  # built, compiled
    cp, cg = p.copy(), g.copy()
    cm, cv = opt.state(p)["m"].copy(), opt.state(p)["v"].copy()
    ceiling_read = read_ceiling((cp, cg, cm, cv) if name == "lamb" else (cg, cv))
    ceiling_update = cpu_ceiling(cp, cg, [cm, cv])

    def fused():
        opt.apply_gradients([(g, p)])

    def ceiling():
        ceiling_read()
        ceiling_update()
    return {"fused": fused, "ceiling": ceiling, "reduction ceiling": ceiling_read,
            "update ceiling": ceiling_update}


def measure(name: str, n: int, rounds: int, calls: int) -> dict:
    """Median seconds per call of each contender: ``rounds`` interleaved rounds, each a
    block of ``calls`` calls."""
    steps = contenders(name, n)
    for step in steps.values():  # warm: compiled, pages touched
        step()
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            times[k].append((time.perf_counter() - start) / calls)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 24)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=4, help="calls per timed block")
    args = parser.parse_args(argv)
    with open("/proc/loadavg") as f:
        print(f"load average at the start: {f.read().split()[0]}")
    print("| optimizer | bytes/elem | fused ms | ceiling ms (reduction + update) | "
          "fused GB/s | fraction of ceiling |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("lamb", "stableadamw"):
        t = measure(name, args.size, args.rounds, args.calls)
        per_element = sum(r + w for r, w in PASSES[name].values())
        gbs = args.size * per_element / t["fused"] / 1e9
        print(f"| {name} | {per_element} | {t['fused'] * 1e3:.2f} | "
              f"{t['ceiling'] * 1e3:.2f} ({t['reduction ceiling'] * 1e3:.2f} + "
              f"{t['update ceiling'] * 1e3:.2f}) | {gbs:.1f} | "
              f"{t['ceiling'] / t['fused']:.2f} |")


if __name__ == "__main__":
    main()
