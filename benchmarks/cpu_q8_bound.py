"""Where the CPU q8 AdamW step's time goes: its memory-bound rate, its in-cache (compute-only)
rate, and the throughput of the vector operations its arithmetic is made of.

Three measurements, each contender a process of its own, started afresh for each round,
the rounds interleaved (A B C, A B C, ...); each prints medians over rounds and the spread
(max/min):

- ``step``: ``fusedopt.AdamW(state_dtype=...)`` (torch convention, float32 params) on one
  tensor of ``--n`` elements (2^24 by default: DRAM-bound), and the traffic ceiling of
  benchmarks/cpu_quantized.py over the same elements, in ns per element;
- ``cache``: the same step on cache-resident tensors of ``--small`` and ``2 * --small``
  elements per thread (2^16 by default: param, grad and codes in L2), ``--calls`` steps
  back to back, on all threads (the serial threshold of small steps set to 0); the rate is
  the slope between the two sizes (elements / time), so the per-step launch cost (waking
  the threads) drops out: the step's compute-only rate;
- ``ops``: a Numba loop over an L1-resident float32 array (2^11 elements) doing eight
  independent operations per element (``op(a + c_k, b)`` for eight constants c_k, op one of
  ``sqrt(x)``, ``x / b``, ``x * b``, ``x + b``, the eight results summed), 512-bit vectors
  preferred as in the library's loops, repeated: ns per operation and element on one
  core (each includes two additions, which run beside a square root or a division), and
  the cycles per 16-lane operation at ``--ghz``.

    flock -x /tmp/fusedopt-quiet.lock python benchmarks/cpu_q8_bound.py step cache ops

The step and in-cache rates use the same threads (Numba's, all cores by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

OPS = ("sqrt", "div", "mul", "add")


def _step_times(state: str, n: int, calls: int, warmup: int) -> list[float]:
    import numpy as np

    import fusedopt
    # every size on all of Numba's threads, the cache-resident ones too (fusedopt runs a
    # step of fewer than config.CPU_SERIAL_BELOW elements on the calling thread alone)
    fusedopt.config.CPU_SERIAL_BELOW = 0
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 0.01).astype(np.float32)
    opt = fusedopt.AdamW(learning_rate=1e-3, epsilon=1e-8, weight_decay=0.01,
                         convention="torch", state_dtype=None if state == "fp32" else state,
                         min_quantized_size=0)
    for _ in range(warmup):
        opt.apply_gradients([(g, p)])
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        opt.apply_gradients([(g, p)])
        times.append(time.perf_counter() - t)
    return times


def _ceiling_times(n: int, calls: int, warmup: int) -> list[float]:
    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cpu_quantized import _ceiling
    rng = np.random.default_rng(0)
    step = _ceiling(rng.standard_normal(n).astype(np.float32),
                    rng.standard_normal(n).astype(np.float32))
    for _ in range(warmup):
        step()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _ops_times(op: str, size: int, repeats: int) -> list[float]:
    import numpy as np
    from numba import njit

    from fusedopt.backends.cpu.loop import _prefer_wide_vectors

    f = np.float32
    c0, c1, c2, c3, c4, c5, c6, c7 = (f(0.125 * k) for k in range(8))

    @njit(inline="always", error_model="numpy")
    def one(x, y):
        if op == "sqrt":
            return np.sqrt(x)
        if op == "div":
            return x / y
        if op == "mul":
            return x * y
        return x + y

    def body(a, b, out, repeats):
        _prefer_wide_vectors()
        for _ in range(repeats):
            for i in range(a.size):
                x, y = a[i], b[i]
                out[i] = (((one(x + c0, y) + one(x + c1, y)) + (one(x + c2, y) + one(x + c3, y)))
                          + ((one(x + c4, y) + one(x + c5, y)) + (one(x + c6, y)
                                                                  + one(x + c7, y))))
            a[0] = out[a.size - 1]  # the next repeat depends on this one: not hoisted

    run = njit(error_model="numpy")(body)
    a = np.random.default_rng(0).uniform(0.5, 2.0, size).astype(np.float32)
    b = np.random.default_rng(1).uniform(0.5, 2.0, size).astype(np.float32)
    out = np.empty_like(a)
    run(a, b, out, 10)
    asm = next(iter(run.inspect_asm().values()))
    wide = {"sqrt": "vsqrtps", "div": "vdivps", "mul": "vmulps", "add": "vaddps"}[op]
    zmm = any(wide in line and "zmm" in line for line in asm.splitlines())
    times = []
    for _ in range(7):
        t = time.perf_counter()
        run(a, b, out, repeats)
        times.append((time.perf_counter() - t) / (repeats * size * 8))
    return [float(zmm)] + times


def worker(spec: str, args) -> list[float]:
    kind, name, n = spec.split(":")
    n = int(n)
    if kind == "ops":
        return _ops_times(name, n, args.repeats)
    if name == "ceiling":
        return _ceiling_times(n, args.calls, args.warmup)
    return _step_times(name, n, args.calls, args.warmup)


def _rounds(specs: list[str], args) -> dict:
    out = {s: [] for s in specs}
    for _ in range(args.rounds):
        for s in specs:
            cmd = [sys.executable, __file__, "--worker", s, "--calls", str(args.calls),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out[s].append(json.loads(res.stdout.splitlines()[-1]))
    return out


def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) / min(values)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="*", default=["step", "cache", "ops"])
    parser.add_argument("--n", type=int, default=1 << 24)
    parser.add_argument("--small", type=int, default=1 << 16, help="elements per thread")
    parser.add_argument("--states", default="q8,q8-dynamic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20000)
    parser.add_argument("--ghz", type=float, default=None, help="core clock, for cycles")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    import numba
    threads = numba.config.NUMBA_NUM_THREADS
    states = args.states.split(",")
    print(f"{os.cpu_count()} cores, {threads} Numba threads, {args.rounds} rounds")
    if "step" in args.what:
        specs = [f"step:{c}:{args.n}" for c in ["ceiling"] + states]
        res = _rounds(specs, args)
        ceil = statistics.median(statistics.median(r) for r in res[specs[0]]) / args.n
        print(f"\nstep, {args.n} elements, {args.calls} steps a round (median of each round)")
        print("| contender | ns / element | spread | fraction of the ceiling |")
        print("|---|---:|---:|---:|")
        for s in specs:
            med, spread = _summary([statistics.median(r) / args.n for r in res[s]])
            print(f"| {s.split(':')[1]} | {med * 1e9:.3f} | {spread:.2f} | {ceil / med:.2f} |")
        print(f"0.8 of the ceiling: {ceil / 0.8 * 1e9:.3f} ns / element "
              f"({ceil / 0.8 * threads * 1e9:.3f} ns per element and core)")
    if "cache" in args.what:
        small, large = args.small * threads, 2 * args.small * threads
        specs = [f"step:{c}:{m}" for c in states for m in (small, large)]
        res = _rounds(specs, args)
        print(f"\nin cache, {small} and {large} elements ({args.calls} steps a round): "
              "the slope")
        print("| state | ns / element (slope) | spread | ns per element and core | "
              "step at the small size, ms |")
        print("|---|---:|---:|---:|---:|")
        for c in states:
            lo, hi = res[f"step:{c}:{small}"], res[f"step:{c}:{large}"]
            slopes = [(statistics.median(b) - statistics.median(a)) / (large - small)
                      for a, b in zip(lo, hi)]
            med, spread = _summary(slopes)
            step = statistics.median(statistics.median(a) for a in lo)
            print(f"| {c} | {med * 1e9:.3f} | {spread:.2f} | {med * threads * 1e9:.3f} | "
                  f"{step * 1e3:.3f} |")
    if "ops" in args.what:
        specs = [f"ops:{op}:2048" for op in OPS]
        res = _rounds(specs, args)
        print("\nops: one operation per element of an L1-resident float32 array, one core")
        print("| operation | 512-bit | ns / element (median) | spread | cycles / 16 lanes |")
        print("|---|---|---:|---:|---:|")
        for s in specs:
            zmm = all(r[0] for r in res[s])
            med, spread = _summary([statistics.median(r[1:]) for r in res[s]])
            cyc = f"{med * 1e9 * args.ghz * 16:.1f}" if args.ghz else "-"
            print(f"| {s.split(':')[1]} | {'zmm' if zmm else 'no'} | {med * 1e9:.4f} | "
                  f"{spread:.2f} | {cyc} |")


if __name__ == "__main__":
    main()
