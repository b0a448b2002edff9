"""Cold compile time of the CPU loop: one step of every registered optimizer, per dtype.

For each dtype a fresh process on an empty Numba cache (a new temporary folder) takes one
step of each public optimizer that takes the dtype, at its defaults on an 8x8 param (Muon steps 2-D params only), so each step compiles its span
function (fusedopt/backends/cpu/loop.py); the first also compiles the shared table walk. Prints
the seconds per dtype and per variant, as markdown.

    python benchmarks/cpu_compile_time.py                     # float32 bfloat16 float16
    python benchmarks/cpu_compile_time.py --dtypes float16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def _worker(dtype: str) -> None:
    import time

    import numpy as np

    import fusedopt
    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.memory.storage import numpy_dtype

    classes = {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}
    start = time.perf_counter()
    names = [name for name in sorted(REGISTRY)
             if REGISTRY[name].public and dtype in REGISTRY[name].dtypes]
    for name in names:
        p, g = np.zeros((8, 8), numpy_dtype(dtype)), np.zeros((8, 8), numpy_dtype(dtype))
        # Muon keeps its state in the param's dtype (no float32 state for a 16-bit param).
        extra = {"state_dtype": dtype} if REGISTRY[name].matrix is not None else {}
        classes[name](backend="cpu", **extra).apply_gradients([(g, p)])
    print(json.dumps({"seconds": time.perf_counter() - start, "variants": len(names)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    lines = ["| dtype | run | variants | seconds | seconds per variant |", "|---|---:|---:|---:|---:|"]
    for dtype in args.dtypes:
        for run in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, NUMBA_CACHE_DIR=cache)
                out = subprocess.run([sys.executable, __file__, "--worker", dtype], env=env,
                                     check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            lines.append(f"| {dtype} | {run + 1} | {result['variants']} | "
                         f"{result['seconds']:.1f} | "
                         f"{result['seconds'] / result['variants']:.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
