"""The CPU Adam step on quiet cores and on cores another process holds.

Each contender runs in its own process (OpenMP pools and their wait policies are per
process) and the processes take turns, round by round in rotating order, each timing
``--steps`` steps per turn while the others wait on their pipe. Every round is timed
twice: on the machine as it is ("quiet"), then with one spinning process per core started
by this script ("contended"); the spinners stop between the two.

Contenders (all with torch's default threads):

- ``fusedopt``: fusedopt.torch.Adam, fusedopt.torch imported first (its defaults: idle
  threads sleep, threads follow torch, small steps on the calling thread);
- ``fusedopt, spinning``: the same with ``OMP_WAIT_POLICY=active`` (idle threads spin, the
  OpenMP default wait before this policy);
- ``fusedopt, spin 1k`` and ``spin 10k``: with ``GOMP_SPINCOUNT`` 1000 and 10000 (idle
  threads spin that many rounds, then sleep);
- ``fusedopt, 1 thread``: with ``torch.set_num_threads(1)`` (which the step follows);
- ``fusedopt, static``: with ``config.CPU_DYNAMIC_ITEMS = False``: the work items split in
  equal halves up front, instead of handed out one at a time to whichever thread asks;
- ``torch fused``: torch.optim.Adam(fused=True), torch's defaults;
- ``torch fused, passive``: the same with ``OMP_WAIT_POLICY=passive``.

Param sets: ``1k`` (one 2^10-element tensor), ``1m`` (one 2^20), ``20m`` (200 tensors of
100,000 elements: 20M params).

    python benchmarks/cpu_contention.py --sets 1k 1m 20m
    python benchmarks/cpu_contention.py --sets 1m --rounds 2 --steps 5   # smoke test

Prints a markdown block: command, machine, load, per-set medians and IQRs (us per step),
each contender's contended/quiet ratio, and fusedopt/torch-fused ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

CONTENDERS = {
    "fusedopt": ("fusedopt", {}),
    "fusedopt, spinning": ("fusedopt", {"OMP_WAIT_POLICY": "active"}),
    "fusedopt, spin 1k": ("fusedopt", {"GOMP_SPINCOUNT": "1000"}),
    "fusedopt, spin 10k": ("fusedopt", {"GOMP_SPINCOUNT": "10000"}),
    "fusedopt, 1 thread": ("fusedopt", {"CONTENTION_THREADS": "1"}),
    "fusedopt, static": ("fusedopt", {"CONTENTION_STATIC": "1"}),
    "torch fused": ("torch", {}),
    "torch fused, passive": ("torch", {"OMP_WAIT_POLICY": "passive"}),
}
SETS = {"1k": [1 << 10], "1m": [1 << 20], "20m": [100_000] * 200}
STEPS = {"1k": 400, "1m": 40, "20m": 3}


def worker(kind: str, set_name: str) -> None:
    """Build one optimizer over the set, then answer ``steps k`` with k step times."""
    if kind == "fusedopt":
        import fusedopt.torch as ft
    import torch

    if os.environ.get("CONTENTION_THREADS"):
        torch.set_num_threads(int(os.environ["CONTENTION_THREADS"]))
    if os.environ.get("CONTENTION_STATIC"):
        from fusedopt import config
        config.CPU_DYNAMIC_ITEMS = False
    torch.manual_seed(0)
    params = [torch.zeros(n, requires_grad=True) for n in SETS[set_name]]
    for p in params:
        p.grad = torch.randn(p.numel()) * 1e-3
    opt = (ft.Adam(params, lr=1e-3) if kind == "fusedopt"
           else torch.optim.Adam(params, lr=1e-3, fused=True))
    for _ in range(3):
        opt.step()
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        k = int(line.split()[1])
        times = []
        for _ in range(k):
            t = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - t)
        print(json.dumps(times), flush=True)


def _start(name: str, set_name: str):
    kind, env = CONTENDERS[name]
    full = dict(os.environ)
    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "CONTENTION_THREADS",
                "CONTENTION_STATIC"):
        full.pop(key, None)
    full.update(env)
    proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, set_name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=full)
    assert json.loads(proc.stdout.readline()) == "ready", name
    return proc


def _spinners(n: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _stop(procs) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def measure(set_name: str, names: list, rounds: int, steps: int) -> dict:
    procs = {name: _start(name, set_name) for name in names}
    times = {(name, phase): [] for name in names for phase in ("quiet", "contended")}
    loads = []
    try:
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for phase in ("quiet", "contended"):
                spin = _spinners(os.cpu_count()) if phase == "contended" else []
                time.sleep(0.2 if spin else 0.0)
                try:
                    for name in order:
                        proc = procs[name]
                        proc.stdin.write(f"steps {steps}\n")
                        proc.stdin.flush()
                        times[name, phase] += json.loads(proc.stdout.readline())
                finally:
                    _stop(spin)
                loads.append(os.getloadavg()[0])
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    return {"times": times, "loads": loads}


def fair_share_bound(t1: float, t2: float) -> float:
    """The contended/quiet ratio of an ideally balanced two-thread step when each of its
    threads shares its core with one spinner and gets half of it, the two cores taking
    turns independently: a quarter of the time both threads run (the step's quiet
    two-thread speed, 1/t2), half of the time one runs (one thread's speed, 1/t1), a
    quarter of the time neither. Wall time t2 / (t2 / 4 / t2 + t2 / 2 / t1) relative to
    t2: 1 / (1/4 + t2 / (2 t1)). A step that waits for a thread preempted mid-task, or
    splits its work unevenly, takes longer."""
    return 1.0 / (0.25 + 0.5 * t2 / t1)


def _stats(values) -> tuple[float, float, float]:
    """(median, IQR, mean) in us: the mean shows the rare slow steps the median hides."""
    a = np.asarray(values) * 1e6
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return med, q3 - q1, float(a.mean())


def report(args, results: dict) -> str:
    lines = ["```", "python benchmarks/cpu_contention.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]), "```", ""]
    import numba
    import torch
    lines.append(f"{os.cpu_count()} cores (shared with other work), numba {numba.__version__}, "
                 f"torch {torch.__version__}, {args.rounds} rounds, contended = one spinning "
                 f"process per core started by the benchmark.")
    for set_name, res in results.items():
        loads = res["loads"]
        lines += ["", f"**{set_name}** ({len(SETS[set_name])} tensors, "
                  f"{sum(SETS[set_name]):,} params; 1-min load average during the run "
                  f"{min(loads):.1f}-{max(loads):.1f})", "",
                  "| contender | quiet median (IQR) us | quiet mean | contended median (IQR) us "
                  "| contended mean | contended / quiet (medians) |", "|---|---|---|---|---|---|"]
        med = {}
        for name in args.contenders:
            q, qi, qm = _stats(res["times"][name, "quiet"])
            c, ci, cm = _stats(res["times"][name, "contended"])
            med[name] = (q, c)
            lines.append(f"| {name} | {q:,.1f} ({qi:,.1f}) | {qm:,.1f} | {c:,.1f} ({ci:,.1f}) "
                         f"| {cm:,.1f} | {c / q:.2f}x |")
        if "fusedopt" in med and "fusedopt, 1 thread" in med:
            t2, t1 = med["fusedopt"][0], med["fusedopt, 1 thread"][0]
            lines += ["", f"Fair-share bound: quiet, one thread takes {t1 / t2:.2f}x the time of "
                          f"all; a perfectly balanced step whose threads each get half of "
                          f"their core, independently, takes at least "
                          f"{fair_share_bound(t1, t2):.2f}x its quiet time (see fair_share_bound)"]
        if "fusedopt" in med and "torch fused" in med:
            (fq, fc), (tq, tc) = med["fusedopt"], med["torch fused"]
            lines += ["", f"fusedopt / torch fused: quiet {fq / tq:.2f}x, "
                          f"contended {fc / tc:.2f}x"]
    return "\n".join(lines)


def main() -> None:
    if "--worker" in sys.argv:
        i = sys.argv.index("--worker")
        worker(sys.argv[i + 1], sys.argv[i + 2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["1k", "1m", "20m"], choices=list(SETS))
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        choices=list(CONTENDERS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per turn")
    args = parser.parse_args()
    results = {s: measure(s, args.contenders, args.rounds, args.steps or STEPS[s])
               for s in args.sets}
    print(report(args, results))


if __name__ == "__main__":
    main()
