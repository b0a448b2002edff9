"""CPU AdamW with 8-bit state: fusedopt q8 (the power map, arithmetic codes) and q8-dynamic
(the dynamic map, table lookups) against their traffic ceiling, bitsandbytes' AdamW8bit and
torchao's AdamW8bit, and fusedopt's float32 AdamW for scale.

Each contender runs in a process of its own, started afresh for each round, and the rounds
interleave the contenders (A B C D, A B C D, ...) so that a noisy moment of the shared
machine hits all of them; a round times ``--steps`` steps after ``--warmup`` and reports
its median; the table gives the median over rounds and the spread (max/min).

The traffic ceiling is a parallel Numba loop that moves exactly the bytes a q8 AdamW step
must move - read param, grad and both slots' codes and scales, write param, codes and
scales -

    bytes = n * (4 + 4 + 4 + 2 * (1 + 1)) + blocks * 2 * (4 + 4)

(float32 param read and written, float32 grad read, each of the two slots' codes read and
written; per block of 256 each slot's absmax read and written), with trivial math, over
the same threads.

torchao compiles its step with torch.compile (a C++ build of many minutes on this machine);
``--torchao-eager`` runs its same operations without compiling, and the table says which.

    flock -x /tmp/fusedopt-quiet.lock python benchmarks/cpu_quantized.py --sizes 16777216
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CONTENDERS = ("ceiling", "fusedopt-q8", "fusedopt-q8-dynamic", "fusedopt-fp32", "bnb-8bit",
              "torchao-8bit")
BLOCK = 256


def traffic_bytes(n: int) -> int:
    """The bytes a q8 AdamW step must move (see the module's docstring)."""
    blocks = -(-n // BLOCK)
    return n * (4 + 4 + 4 + 2 * (1 + 1)) + blocks * 2 * (4 + 4)


def _worker(name: str, n: int, steps: int, warmup: int, eager: bool) -> list[float]:
    import numpy as np
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n).astype(np.float32)
    g0 = (rng.standard_normal(n) * 0.01).astype(np.float32)
    hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    if name == "ceiling":
        step = _ceiling(p0, g0)
    elif name.startswith("fusedopt"):
        import fusedopt
        state = name.split("-", 1)[1]  # q8 (the power map), q8-dynamic, fp32
        opt = fusedopt.AdamW(learning_rate=hp["lr"], epsilon=hp["eps"],
                             weight_decay=hp["weight_decay"], convention="torch",
                             state_dtype=None if state == "fp32" else state)
        p = p0.copy()

        def step():
            opt.apply_gradients([(g0, p)])
    else:
        import torch
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count())))
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        p.grad = torch.from_numpy(g0.copy())
        if name == "bnb-8bit":
            import bitsandbytes as bnb
            opt = bnb.optim.AdamW8bit([p], **hp)
        else:
            import torchao.optim
            if eager:  # its step's own operations, uncompiled
                torch.compile = lambda function, **options: function
            opt = torchao.optim.AdamW8bit([p], **hp)

        def step():
            opt.step()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _ceiling(p0, g0):
    """A step that moves the bytes of a q8 AdamW step (traffic_bytes) with trivial math."""
    import numpy as np
    from numba import njit, prange

    n = p0.size
    blocks = -(-n // BLOCK)
    p = p0.copy()
    m = np.zeros(n + 4 * blocks, np.uint8)
    v = np.zeros(n + 4 * blocks, np.uint8)
    a = np.float32(0.0)

    @njit(parallel=True, fastmath=False)
    def run(p, g, m, v, a):
        for b in prange(blocks):
            lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
            rec = b * (BLOCK + 4)
            for i in range(lo, hi):
                p[i] += a * g[i]
                m[rec + 4 + i - lo] = m[rec + 4 + i - lo] | np.uint8(a)
                v[rec + 4 + i - lo] = v[rec + 4 + i - lo] | np.uint8(a)
            for k in range(4):
                m[rec + k] = m[rec + k] | np.uint8(a)
                v[rec + k] = v[rec + k] | np.uint8(a)

    def step():
        run(p, g0, m, v, a)
    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="16777216")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--torchao-eager", action="store_true")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        name, n = args.worker.split(":")
        times = _worker(name, int(n), args.steps, args.warmup, args.torchao_eager)
        print(json.dumps(times))
        return
    contenders = args.contenders.split(",")
    for n in map(int, args.sizes.split(",")):
        rounds: dict[str, list[float]] = {c: [] for c in contenders}
        for _ in range(args.rounds):
            for c in contenders:
                cmd = [sys.executable, __file__, "--worker", f"{c}:{n}", "--steps",
                       str(args.steps), "--warmup", str(args.warmup)]
                if args.torchao_eager:
                    cmd.append("--torchao-eager")
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rounds[c].append(statistics.median(json.loads(out.stdout.splitlines()[-1])))
        gb = traffic_bytes(n) / 1e9
        ceiling = statistics.median(rounds["ceiling"]) if "ceiling" in rounds else None
        q8 = statistics.median(rounds["fusedopt-q8"]) if "fusedopt-q8" in rounds else None
        print(f"\n{n} elements, {os.cpu_count()} cores, {args.rounds} rounds x {args.steps} "
              f"steps; q8 traffic {traffic_bytes(n)} bytes")
        print("| contender | ms / step (median) | spread | GB/s of q8 traffic | "
              "q8 speed vs it | fraction of the ceiling |")
        print("|---|---:|---:|---:|---:|---:|")
        for c in contenders:
            med = statistics.median(rounds[c])
            spread = max(rounds[c]) / min(rounds[c])
            label = c + (" (eager)" if c.startswith("torchao") and args.torchao_eager else "")
            ratio = f"{med / q8:.2f}x" if q8 else "-"
            fraction = f"{ceiling / med:.2f}" if ceiling else "-"
            print(f"| {label} | {med * 1e3:.1f} | {spread:.2f} | {gb / med:.2f} | {ratio} "
                  f"| {fraction} |")
        if ceiling and q8:
            print(f"fusedopt q8 at {ceiling / q8:.2f} of its traffic ceiling")


if __name__ == "__main__":
    main()
