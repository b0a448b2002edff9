"""Two optimizers stepped at once from two threads, first call included; in a process of its own.

    python tests/concurrency_worker.py OUT.npz [--sequential] [--no-lock] [--wait FILE]
                                               [--steps N]

Writes every param after the steps to OUT.npz. ``--sequential`` runs the two optimizers one
after the other in one thread instead (the bits to match); ``--no-lock`` removes the guard
fusedopt puts around CPU steps under Numba's workqueue layer (to show what it prevents);
``--wait FILE`` waits for FILE to exist before the first step, so that two processes start
compiling at the same moment; ``--steps N`` steps N times instead of STEPS. Also prints Numba's cache hits and misses of the CPU loop.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

#: Sizes: several CPU tasks (the parallel loop) plus small and 2-D tensors.
SHAPES = [(300_000,), (7,), (37, 53)]
STEPS = 4


def _optimizers():
    import fusedopt
    from fusedopt import config
    config.CPU_SERIAL_BELOW = 0  # the 300k-element tensor's steps on the pool, whatever its size
    return {"adam": lambda: fusedopt.Adam(learning_rate=0.01, amsgrad=True),
            "nadam": lambda: fusedopt.Nadam(learning_rate=0.01, global_clipnorm=1.0)}


def _problem(seed, steps=STEPS):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(steps)]
    return params, grads


def _train(name, make, seed, out, barrier=None, steps=STEPS):
    params, grads = _problem(seed, steps)
    opt = make()
    if barrier is not None:
        barrier.wait()          # both first steps (builds, compiles) start together
    for g in grads:
        opt.apply_gradients(zip(g, params))
    for i, p in enumerate(params):
        out[f"{name}{i}"] = p


def run(sequential: bool = False, steps: int = STEPS) -> dict:
    out: dict = {}
    makers = _optimizers()
    if sequential:
        for seed, (name, make) in enumerate(makers.items()):
            _train(name, make, seed, out, steps=steps)
        return out
    barrier = threading.Barrier(len(makers))
    errors = []

    def target(*args):
        try:
            _train(*args)
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(name, make, seed, out, barrier, steps))
               for seed, (name, make) in enumerate(makers.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def cache_counts() -> tuple[int, int]:
    from fusedopt.backends.cpu import loop
    return loop.cache_counts()


if __name__ == "__main__":
    args = sys.argv[1:]
    target = Path(args[0])
    if "--wait" in args:
        go = Path(args[args.index("--wait") + 1])
        while not go.exists():
            time.sleep(0.001)
    if "--no-lock" in args:
        import contextlib

        from fusedopt.engine import threads as _threads
        _threads._guard = contextlib.nullcontext()
    steps = int(args[args.index("--steps") + 1]) if "--steps" in args else STEPS
    results = run(sequential="--sequential" in args, steps=steps)
    np.savez(target, **results)
    import numba
    hits, misses = cache_counts()
    print(f"layer={numba.threading_layer()} cache_hits={hits} cache_misses={misses}")
