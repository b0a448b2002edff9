"""The newer optimizers' CPU steps against their peers' fastest CPU paths, at 2^24 float32
elements: each contender in a process of its own, rounds interleaved (A B C .., A B C ..),
medians over rounds and their spread (max/min), and the peer's time over fusedopt's.

    python benchmarks/cpu_peers.py --optimizers adan,ftrl,sf-adamw,sf-sgd,radam --rounds 3

Contenders, by the name given to ``--optimizers``:

- ``radam``, ``rprop``, ``asgd``: ``torch.optim``'s class with ``foreach=True``;
- ``adan``: torch-optimi's ``Adan`` with ``foreach=True`` (its Triton path needs a GPU);
- ``sf-adamw``, ``sf-sgd``: the schedulefree package's ``AdamWScheduleFree`` and
  ``SGDScheduleFree`` (foreach where it takes it), in train mode;
- ``ademamix``: bitsandbytes' 32-bit ``AdEMAMix`` (its CPU path);
- ``ftrl``: ``keras.optimizers.Ftrl`` on the torch backend, through ``apply_gradients``,
  against ``fusedopt.keras.Ftrl`` the same way (torch has no Ftrl).

fusedopt's side is ``fusedopt.torch.<Class>`` (``fusedopt.keras.Ftrl`` for Ftrl) with the
same hyperparameters. Each process times ``--steps`` steps after 3 untimed ones and prints
its median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

N = 1 << 24
TORCH_OPTIM = {"radam": "RAdam", "rprop": "Rprop", "asgd": "ASGD"}
FUSED = {"radam": "RAdam", "rprop": "Rprop", "asgd": "ASGD", "adan": "Adan",
         "sf-adamw": "AdamWScheduleFree", "sf-sgd": "SGDScheduleFree",
         "ademamix": "AdEMAMix"}


def _step_function(side: str, name: str):
    if name == "ftrl":
        return _keras_ftrl(side)
    import fusedopt.torch  # noqa: F401  (before torch: one OpenMP runtime for both)
    import torch
    p = torch.nn.Parameter(torch.randn(N, generator=torch.Generator().manual_seed(0)))
    p.grad = torch.randn(N, generator=torch.Generator().manual_seed(1)) * 1e-2
    lr = 1e-3
    if side == "fusedopt":
        opt = getattr(fusedopt.torch, FUSED[name])([p], lr=lr)
    elif name in TORCH_OPTIM:
        opt = getattr(torch.optim, TORCH_OPTIM[name])([p], lr=lr, foreach=True)
    elif name == "adan":
        import optimi
        opt = optimi.Adan([p], lr=lr, foreach=True, triton=False)
    elif name.startswith("sf-"):
        import schedulefree
        cls = schedulefree.AdamWScheduleFree if name == "sf-adamw" else \
            schedulefree.SGDScheduleFree
        opt = cls([p], lr=lr, foreach=True)
    elif name == "ademamix":
        import bitsandbytes as bnb
        opt = bnb.optim.AdEMAMix([p], lr=lr, optim_bits=32)
    else:
        raise SystemExit(f"no peer named {name!r}")
    if callable(getattr(opt, "train", None)):
        opt.train()
    return opt.step


def _keras_ftrl(side: str):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import numpy as np
    if side == "fusedopt":
        import fusedopt.keras
        opt = fusedopt.keras.Ftrl(learning_rate=1e-3)
    else:
        opt = keras.optimizers.Ftrl(learning_rate=1e-3)
    rng = np.random.default_rng(0)
    variable = keras.Variable(rng.standard_normal(N).astype(np.float32))
    grad = keras.ops.convert_to_tensor((rng.standard_normal(N) * 1e-2).astype(np.float32))
    return lambda: opt.apply_gradients([(grad, variable)])


def _worker(side: str, name: str, steps: int) -> float:
    step = _step_function(side, name)
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizers", default="adan,ftrl,sf-adamw,sf-sgd,radam")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        side, name = args.worker.split(":")
        print(json.dumps(_worker(side, name, args.steps)))
        return
    names = args.optimizers.split(",")
    medians: dict = {(s, n): [] for n in names for s in ("fusedopt", "peer")}
    for r in range(args.rounds):
        for name in names:
            order = ("fusedopt", "peer") if r % 2 == 0 else ("peer", "fusedopt")
            for side in order:
                out = subprocess.run([sys.executable, __file__, "--worker", f"{side}:{name}",
                                      "--steps", str(args.steps)], check=True,
                                     capture_output=True, text=True).stdout
                medians[side, name].append(json.loads(out.strip().splitlines()[-1]))
    load = os.getloadavg()[0]
    print(f"2^24 float32 elements, {args.rounds} rounds x {args.steps} steps, "
          f"{os.cpu_count()} cores, 1-minute load {load:.1f} at the end")
    print("| optimizer | fusedopt ms (spread) | peer ms (spread) | peer / fusedopt |")
    print("|---|---:|---:|---:|")
    for name in names:
        f, p = medians["fusedopt", name], medians["peer", name]
        mf, mp = statistics.median(f), statistics.median(p)
        print(f"| {name} | {mf * 1e3:.2f} ({max(f) / min(f):.2f}) | "
              f"{mp * 1e3:.2f} ({max(p) / min(p):.2f}) | {mp / mf:.1f}x |")


if __name__ == "__main__":
    main()
