"""CPU Adam on 16-bit storage: fused against its traffic ceiling, and against torch's fused
Adam on bfloat16 params.

Experiments (each its own set of contenders, each contender in a process of its own,
driven round by round in a rotating order, so contenders are interleaved and no two thread
pools share a process):

- ``ceiling``: bf16 params + fp32 state (22 B/element), bf16 params + int16 remainder
  (26 B/element) and fp16 params + fp32 state (22 B/element), each against the traffic
  ceiling of its own storage (the same loop, table, loads and stores, with trivial math;
  fusedopt/tools/bench/traffic.py), at ``--sizes``;
- ``torch``: bf16 params + bf16 state (14 B/element) against ``torch.optim.Adam(fused=True)``
  on bf16 params (the same bytes) and the ceiling, at ``--torch-sizes``.

Bytes per step are ``n * (read_bytes + write_bytes)`` from the traffic formula. Between two
timed steps the driver pauses ``PAUSE_S``, so the OpenMP threads of the worker timed last
have stopped spinning (they spin briefly, then sleep) before the next one starts; every
worker keeps its libraries' default thread behaviour. Prints markdown for
benchmarks/RESULTS.md.

    flock -x /tmp/fusedopt-quiet.lock python benchmarks/cpu_storage.py
    python benchmarks/cpu_storage.py --sizes 2^16 --torch-sizes 2^16 --rounds 3   # smoke
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import time

FUSED, CEILING, TORCH = "fused", "ceiling", "torch fused"

#: Seconds between two timed steps of different workers (see the module docstring).
PAUSE_S = 0.02

#: name -> (param dtype, Adam's storage arguments, state arrays for the ceiling).
STORAGES = {
    "bf16 params, fp32 state": ("bfloat16", {}, ("float32", "float32")),
    "bf16 params, remainder": ("bfloat16", dict(master_weights="remainder"),
                               ("float32", "float32", "int16")),
    "bf16 params, bf16 state": ("bfloat16", dict(state_dtype="bfloat16"),
                                ("bfloat16", "bfloat16")),
    "fp16 params, fp32 state": ("float16", {}, ("float32", "float32")),
}


def _size(text: str) -> int:
    return 2 ** int(text[2:]) if text.startswith("2^") else int(text)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2^24,2^26", help="sizes of the ceiling runs")
    parser.add_argument("--torch-sizes", default="2^26,2^20", help="sizes of the torch runs")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed sample (default: batch(n), 1 from 2^24 up)")
    parser.add_argument("--only", choices=("ceiling", "torch"), default=None)
    return parser.parse_args(argv)


# --- a contender, in its own process ------------------------------------------------------

def _step(kind: str, storage: str, n: int):
    """A no-argument step of ``kind`` on ``storage`` at ``n`` elements, and its traffic."""
    import numpy as np

    from fusedopt.memory.storage import numpy_dtype
    param_dtype, kwargs, slot_dtypes = STORAGES[storage]
    rng = np.random.default_rng(0)
    param = (rng.standard_normal(n, dtype=np.float32) * 0.1).astype(numpy_dtype(param_dtype))
    grad = (rng.standard_normal(n, dtype=np.float32) * 0.01).astype(numpy_dtype(param_dtype))
    if kind == TORCH:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        p = torch.from_numpy(param.view(np.int16)).view(torch.bfloat16).requires_grad_()
        p.grad = torch.from_numpy(grad.view(np.int16)).view(torch.bfloat16)
        opt = torch.optim.Adam([p], lr=1e-4, fused=True)
        return opt.step
    import fusedopt
    from fusedopt.memory.group import step_storage
    from fusedopt.tools.bench.traffic import cpu_ceiling
    opt = fusedopt.Adam(learning_rate=1e-4, backend="cpu", **kwargs)
    opt.apply_gradients([(grad, param)])
    if kind == FUSED:
        return lambda: opt.apply_gradients([(grad, param)])
    storage_ = step_storage(opt._engine.launch_groups()[0].group, [grad])
    slots = [np.zeros(n, numpy_dtype(d)) for d in slot_dtypes]
    return cpu_ceiling(np.zeros(n, param.dtype), np.zeros(n, grad.dtype), slots,
                       storage=storage_)


def _worker(conn, kind: str, storage: str, n: int) -> None:
    serve(conn, _step(kind, storage, n))


def serve(conn, step) -> None:
    """A worker's loop: warm ``step`` up, then time the batches the driver asks for."""
    for _ in range(2):  # compile, fault the pages in
        step()
    conn.send("ready")
    while True:
        command = conn.recv()
        if command == "stop":
            return
        start = time.perf_counter()
        for _ in range(command):
            step()
        conn.send((time.perf_counter() - start) / command)


# --- the driver -----------------------------------------------------------------------------

def batch(n: int, steps: int | None = None) -> int:
    """Steps per timed sample: ``steps`` if given, else back to back below 2**24 elements,
    where one step is short enough that waking the thread pool would be most of it."""
    return steps or max(1, 2**24 // n)


def measure(contenders, n: int, rounds: int, worker=_worker, steps: int | None = None) -> dict:
    """contender -> seconds per step in each round (the mean of :func:`batch` steps back to
    back), the contenders timed in turn, the order rotating. ``contenders``: name -> the
    arguments ``worker(conn, *arguments, n)`` takes after the connection."""
    ctx = mp.get_context("spawn")
    workers = {}
    for name, arguments in contenders.items():
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(theirs, *arguments, n), daemon=True)
        proc.start()
        workers[name] = (proc, ours)
    for _, conn in workers.values():
        assert conn.recv() == "ready"
    times = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            conn = workers[name][1]
            time.sleep(PAUSE_S)
            conn.send(batch(n, steps))
            times[name].append(conn.recv())
    for proc, conn in workers.values():
        conn.send("stop")
        proc.join()
    return times


def ratios(a, b) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios a / b."""
    r = [x / y for x, y in zip(a, b)]
    return statistics.median(r), min(r), max(r)


def contender_rows(n: int, times: dict, bytes_of, reference: str) -> list[str]:
    """A markdown table of each contender's median, IQR and GB/s at ``n`` elements of
    ``bytes_of(name)`` bytes, and its time relative to ``reference``'s."""
    lines = ["| contender | B/element | median ms | IQR ms | GB/s | time / "
             f"{reference} |", "|---|---:|---:|---:|---:|---:|"]
    base = statistics.median(times[reference])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        q = statistics.quantiles(seconds, n=4)
        per = bytes_of(name)
        lines.append(f"| {name} | {per} | {median * 1e3:.3f} | {(q[2] - q[0]) * 1e3:.3f} | "
                     f"{n * per / median / 1e9:.1f} | {median / base:.2f} |")
    return lines


def sized_main(argv, *, title: str, script: str, rounds: int, contenders: dict, worker,
               table) -> int:
    """The main of a benchmark of ``contenders`` at each of ``--sizes``: its header, then
    ``table(n, times, steps)`` per size (cpu_rounding.py, cpu_average.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--sizes", default="2^24")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed sample (default: 1 from 2^24 elements up)")
    args = parser.parse_args(argv)
    out = [f"### {title}", "", "```",
           " ".join([f"python benchmarks/{script}", *map(shlex.quote, argv)]).strip(),
           "```", "", f"{os.cpu_count()} logical cores; each contender in its own process, "
           f"{args.rounds} interleaved rounds, {PAUSE_S * 1e3:g} ms apart.", ""]
    for n in (_size(s) for s in args.sizes.split(",")):
        out += table(n, measure(contenders, n, args.rounds, worker, args.steps), args.steps)
    print("\n".join(out))
    return 0


def _traffic(storage: str):
    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.memory.storage import Storage
    from fusedopt.tools.bench.traffic import traffic
    param_dtype, kwargs, _ = STORAGES[storage]
    mode = {True: "master", "remainder": "remainder"}.get(kwargs.get("master_weights"), "plain")
    st = Storage(param_dtype, param_dtype, kwargs.get("state_dtype") or "float32", mode)
    spec = REGISTRY["adam"]
    return traffic(spec, spec.flags(spec.defaults(), "keras"), st)


def _summary(seconds):
    q = statistics.quantiles(seconds, n=4)
    return statistics.median(seconds), q[2] - q[0]


def table(title: str, storage: str, n: int, times: dict, reference: str,
          steps: int | None = None) -> list[str]:
    flow = _traffic(storage)
    moved = flow.total(n)
    lines = [f"**{title}, {n:,} elements** ({flow.read_bytes} + {flow.write_bytes} B/element; "
             f"{batch(n, steps)} step{'s' if batch(n, steps) > 1 else ''} per sample)",
             "", "| contender | median ms | IQR ms | GB/s | time / " + reference + " |",
             "|---|---:|---:|---:|---:|"]
    ref = statistics.median(times[reference])
    for name, seconds in times.items():
        median, iqr = _summary(seconds)
        lines.append(f"| {name} | {median * 1e3:.3f} | {iqr * 1e3:.3f} | "
                     f"{moved / median / 1e9:.1f} | {median / ref:.2f} |")
    ratios = [f / c for f, c in zip(times[FUSED], times[reference])]
    lines += ["", f"Per-round fused / {reference} time: median {statistics.median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f}); fraction of the ceiling's "
              f"speed: {statistics.median(times[CEILING]) / statistics.median(times[FUSED]):.2f}"
              if CEILING in times else "", ""]
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    out = ["### CPU Adam on 16-bit storage", "", "```",
           " ".join(["python benchmarks/cpu_storage.py", *map(shlex.quote, argv)]).strip(),
           "```", "", f"{os.cpu_count()} logical cores; each contender in its own process, "
           f"{args.rounds} interleaved rounds, {PAUSE_S * 1e3:g} ms apart.", ""]
    if args.only in (None, "ceiling"):
        for n in (_size(s) for s in args.sizes.split(",")):
            for storage in ("bf16 params, fp32 state", "bf16 params, remainder",
                            "fp16 params, fp32 state"):
                times = measure({FUSED: (FUSED, storage), CEILING: (CEILING, storage)}, n,
                                args.rounds, steps=args.steps)
                out += table(f"Adam, {storage}", storage, n, times, CEILING, args.steps)
    if args.only in (None, "torch"):
        storage = "bf16 params, bf16 state"
        for n in (_size(s) for s in args.torch_sizes.split(",")):
            times = measure({FUSED: (FUSED, storage), TORCH: (TORCH, storage),
                             CEILING: (CEILING, storage)}, n, args.rounds, steps=args.steps)
            out += table(f"Adam, {storage}, vs torch.optim.Adam(fused=True)", storage, n,
                         times, TORCH, args.steps)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
