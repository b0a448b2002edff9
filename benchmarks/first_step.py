"""How long a new process's first step takes, per optimizer: import, construction, the first
step (which loads its compiled loops from Numba's on-disk cache, or compiles them), and the
second step for scale. Each optimizer in a process of its own, ``--repeats`` times; run it
once before to fill the cache (the first run reports compile times).

    python benchmarks/first_step.py Adam Lamb StableAdamW Adafactor Muon --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKER = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import fusedopt
opt = getattr(fusedopt, sys.argv[1])()
ps = [np.ones((64, 32), np.float32), np.ones((32, 32), np.float32)]
gs = [np.full_like(p, 0.1) for p in ps]
t1 = time.perf_counter()
opt.apply_gradients(list(zip(gs, ps)))
t2 = time.perf_counter()
opt.apply_gradients(list(zip(gs, ps)))
t3 = time.perf_counter()
print(json.dumps([t1 - t0, t2 - t1, t3 - t2]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimizers", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = {name: [] for name in args.optimizers}
    for _ in range(args.repeats):
        for name in args.optimizers:
            out = subprocess.run([sys.executable, "-c", WORKER, name], capture_output=True,
                                 text=True, check=True)
            times[name].append(json.loads(out.stdout.splitlines()[-1]))
    print("| optimizer | import and make (s) | first step (s) | second step (ms) |")
    print("|---|---:|---:|---:|")
    for name, runs in times.items():
        make, first, second = (statistics.median(r[k] for r in runs) for k in range(3))
        spread = f"{min(r[1] for r in runs):.2f}-{max(r[1] for r in runs):.2f}"
        print(f"| {name} | {make:.2f} | {first:.2f} ({spread}) | {second * 1e3:.2f} |")


if __name__ == "__main__":
    main()
