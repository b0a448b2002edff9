"""Where a CPU step is worth Numba's thread pool: the Adam step (float32, one tensor) on the
calling thread against the pool, by size, to choose ``config.CPU_SERIAL_BELOW``.

One process, fusedopt.Adam on NumPy arrays, idle threads sleeping (fusedopt's default wait
policy). At each size the two ways take turns, block by block (``--blocks`` blocks of
enough steps to last about 2 ms), on the machine as it is and then with one spinning
process per core started by this script.

    python benchmarks/cpu_threads.py
    python benchmarks/cpu_threads.py --sizes 2^14 2^16 --blocks 3   # smoke test

Prints a markdown table: median us per step of each way, and pool / calling thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

import fusedopt
from fusedopt import config


def _size(text: str) -> int:
    return 2 ** int(text[2:]) if text.startswith("2^") else int(text)


def _optimizer(n: int, serial: bool):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    opt = fusedopt.Adam(learning_rate=1e-3, backend="cpu")

    def step():
        config.CPU_SERIAL_BELOW = 1 << 62 if serial else 0
        opt.apply_gradients([(g, p)])
    for _ in range(3):
        step()
    return step


def _block(step, k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        step()
    return (time.perf_counter() - t) / k


def measure(n: int, blocks: int) -> dict:
    ways = {"calling thread": _optimizer(n, True), "pool": _optimizer(n, False)}
    k = max(1, int(2e-3 / _block(ways["pool"], 3)))
    times = {w: [] for w in ways}
    for b in range(blocks):
        for w in (list(ways) if b % 2 == 0 else list(ways)[::-1]):
            times[w].append(_block(ways[w], k))
    return {w: float(np.median(v)) * 1e6 for w, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=_size,
                        default=[2 ** e for e in range(12, 21)])
    parser.add_argument("--blocks", type=int, default=15)
    args = parser.parse_args()
    import numba
    numba.get_num_threads()  # starts the layer
    print("```\npython benchmarks/cpu_threads.py " + " ".join(sys.argv[1:]) + "\n```\n")
    print(f"{os.cpu_count()} cores shared with other work; numba {numba.__version__} "
          f"({numba.threading_layer()} layer), pool of "
          f"{numba.config.NUMBA_NUM_THREADS} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}; 1-min load average at the start "
          f"{os.getloadavg()[0]:.2f}.\n")
    print("| elements | machine | calling thread, us | pool, us | pool / calling thread |")
    print("|---:|---|---:|---:|---:|")
    for phase in ("as it is", "one spinner per core"):
        spin = ([subprocess.Popen([sys.executable, "-c", "while True: pass"])
                 for _ in range(os.cpu_count())] if phase != "as it is" else [])
        try:
            for n in args.sizes:
                m = measure(n, args.blocks)
                print(f"| 2^{n.bit_length() - 1} | {phase} | {m['calling thread']:,.1f} | "
                      f"{m['pool']:,.1f} | {m['pool'] / m['calling thread']:.2f} |", flush=True)
        finally:
            for p in spin:
                p.kill()
                p.wait()


if __name__ == "__main__":
    main()
