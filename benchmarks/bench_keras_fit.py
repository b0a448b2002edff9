"""The optimizer's part of a Keras ``fit`` step: fusedopt.keras.Adam against keras.optimizers.Adam.

The model (Keras 3, torch backend, CPU): ``--branches`` Dense(``--width``) layers on one input,
summed, MSE loss. With the defaults, 100 branches of 412 units: 200 variables, 17,015,600
float32 params. ``model.fit`` runs ``--warmup`` + ``--steps`` batches of ``--batch``; inside
that loop the optimizer's ``apply`` (what Keras' train step calls with the grads: Keras'
bookkeeping, clipping, weight decay, the update, the iteration count) is timed by wrapping the
optimizer's ``apply``, and the whole train step by a callback. Warm-up steps (state creation,
kernel compilation) are not counted.

Each contender runs in its own process, as a user's would (torch's and Numba's thread pools
are those of a real run), one process per contender per round, in rotating order. A round's
figure is the median over its steps; the table gives medians over rounds, their IQR, and the
median of the per-round ratios to Keras' Adam.

    python benchmarks/bench_keras_fit.py
    python benchmarks/bench_keras_fit.py --branches 4 --width 64 --steps 4 --rounds 1  # smoke
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

FUSED, KERAS = "fusedopt.keras.Adam", "keras.optimizers.Adam"
CONTENDERS = (KERAS, FUSED)


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--branches", type=int, default=100)
    parser.add_argument("--width", type=int, default=412)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="timed fit steps per process")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set in every worker's environment (e.g. OMP_WAIT_POLICY=PASSIVE)")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _model(keras, branches: int, width: int):
    inputs = keras.Input((width,))
    outputs = [keras.layers.Dense(width, name=f"branch_{i}")(inputs) for i in range(branches)]
    return keras.Model(inputs, keras.layers.Add()(outputs) if branches > 1 else outputs[0])


def worker(args) -> dict:
    """One fit in this process; the per-step times of the optimizer's apply and the step."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    import fusedopt.keras

    keras.utils.set_random_seed(0)
    model = _model(keras, args.branches, args.width)
    optimizer = fusedopt.keras.Adam() if args.worker == FUSED else keras.optimizers.Adam()
    applies, steps = [], []
    apply = optimizer.apply

    def timed_apply(grads, trainable_variables=None):
        start = time.perf_counter()
        apply(grads, trainable_variables)
        applies.append(time.perf_counter() - start)

    optimizer.apply = timed_apply  # what the train step calls, inside model.fit

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            steps.append(time.perf_counter() - self.start)

    model.compile(optimizer=optimizer, loss="mse")
    n = (args.warmup + args.steps) * args.batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, args.width)).astype(np.float32)
    y = rng.standard_normal((n, args.width)).astype(np.float32)
    model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[StepClock()])
    import torch

    return {"apply_s": applies[args.warmup:], "step_s": steps[args.warmup:],
            "threading_layer": _threading_layer(),
            "variables": len(model.trainable_variables),
            "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
            "torch_threads": torch.get_num_threads()}


def _threading_layer() -> str:
    """Numba's threading layer in this process (none until a parallel kernel has run)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "none started"


def _run_worker(name: str, argv: list[str], env: list[str]) -> dict:
    environment = dict(os.environ, **dict(item.split("=", 1) for item in env))
    done = subprocess.run([sys.executable, __file__, *argv, "--worker", name],
                          capture_output=True, text=True, check=False, env=environment)
    if done.returncode:
        raise SystemExit(f"{name} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _quartiles(values) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
    return float(median), float(q1), float(q3)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rounds: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for r in range(args.rounds):
        order = CONTENDERS[r % 2:] + CONTENDERS[:r % 2]
        for name in order:
            rounds[name].append(_run_worker(name, argv, args.env))
    print("\n".join(report(args, argv, rounds)))
    return 0


def report(args, argv, rounds) -> list[str]:
    from fusedopt._bench import machine

    described = machine.describe()
    versions, numba = described["versions"], described["numba"]
    first = rounds[FUSED][0]
    numba = dict(numba, threading_layer=first["threading_layer"])  # the workers' layer
    apply_ms = {n: [1e3 * float(np.median(r["apply_s"])) for r in rs] for n, rs in rounds.items()}
    step_ms = {n: [1e3 * float(np.median(r["step_s"])) for r in rs] for n, rs in rounds.items()}
    ratios = [f / k for f, k in zip(apply_ms[FUSED], apply_ms[KERAS])]
    lines = [
        "### The optimizer's part of a Keras fit step (torch backend, CPU, float32 Adam)",
        "",
        "```",
        " ".join(["python benchmarks/bench_keras_fit.py", *map(shlex.quote, argv)]),
        "```",
        "",
        f"Machine: {described['cpu_model']}, {described['cpu_cores']} logical cores; "
        f"numba {versions['numba']} ({numba['threading_layer']} layer, {numba['threads']} "
        f"threads), torch {versions.get('torch')} ({first['torch_threads']} threads), "
        f"keras {machine.version('keras')}, numpy {versions['numpy']}. Model: "
        f"{args.branches} Dense({args.width}) branches, {first['variables']} variables, "
        f"{first['params']:,} params, batch {args.batch}. Worker environment: "
        f"{' '.join(args.env) or 'as given'}. Per process: {args.warmup} untimed "
        f"+ {args.steps} timed fit steps; {args.rounds} rounds, one process per contender per "
        "round, rotating order. Median over rounds of each round's median step; IQR over "
        "rounds.",
        "",
        "| contender | optimizer.apply median ms | IQR ms | best round ms | "
        "train step median ms | apply / step | apply time / Keras' (median of rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CONTENDERS:
        median, q1, q3 = _quartiles(apply_ms[name])
        step = _quartiles(step_ms[name])[0]
        ratio = 1.0 if name == KERAS else _quartiles(ratios)[0]
        lines.append(f"| {name} | {median:,.2f} | {q3 - q1:,.2f} | {min(apply_ms[name]):,.2f} | "
                     f"{step:,.1f} | {median / step:.0%} | {ratio:.3f} |")
    low, high = min(ratios), max(ratios)
    lines += ["", f"fusedopt / Keras apply time per round: {', '.join(f'{r:.3f}' for r in ratios)}"
                  f" (min {low:.3f}, max {high:.3f})."]
    if not args.env:
        lines += [f"Caveat: {c}" for c in machine.caveats(numba, torch_in_use=True)]
    return lines


if __name__ == "__main__":
    sys.exit(main())
