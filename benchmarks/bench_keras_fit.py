"""The optimizer's part of a Keras ``fit`` step: fusedopt.keras.Adam against keras.optimizers.Adam.

The model (Keras 3, torch backend, CPU): ``--branches`` Dense(``--width``) layers on one input,
summed, MSE loss. With the defaults, 100 branches of 412 units: 200 variables, 17,015,600
float32 params. Inside ``model.fit`` the optimizer's ``apply`` (what Keras' train step calls
with the grads: Keras' bookkeeping, clipping, weight decay, the update, the iteration count)
is timed by wrapping the optimizer's ``apply``, and the whole train step by a callback.

Each contender lives in its own process, as a user's would (torch's and Numba's thread pools
are exactly those of a real run), and keeps its model between rounds; with several ``--env``
settings, each contender runs once per setting. The driver interleaves them all: every round
asks each process, in rotating order, for one ``fit`` of ``--steps`` batches, so a change in
the machine's load hits every contender alike. A round's figure is the median of
its steps; the table gives medians over rounds, IQR, each contender's best round, and the
median of the per-round ratios to Keras' Adam. The first ``fit`` of each process (state
creation, kernel compilation) is not counted.

    python benchmarks/bench_keras_fit.py                 # as given, and OMP_WAIT_POLICY=PASSIVE
    python benchmarks/bench_keras_fit.py --env ""        # the environment as given only
    python benchmarks/bench_keras_fit.py --use-ema       # both keep the moving average
    python benchmarks/bench_keras_fit.py --branches 4 --width 64 --steps 4 --rounds 2  # smoke
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
    parser.add_argument("--steps", type=int, default=6, help="fit steps per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--use-ema", action="store_true",
                        help="both optimizers keep Keras' moving average of the weights")
    parser.add_argument("--env", action="append", metavar="NAME=VALUE[,NAME=VALUE]",
                        help="one environment setting for the workers (repeatable; \"\" = as "
                             "given). Default: as given, and OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _model(keras, branches: int, width: int):
    inputs = keras.Input((width,))
    outputs = [keras.layers.Dense(width, name=f"branch_{i}")(inputs) for i in range(branches)]
    return keras.Model(inputs, keras.layers.Add()(outputs) if branches > 1 else outputs[0])


def worker(args) -> None:
    """Serve fits: for each line on stdin, one fit of ``args.steps`` batches; one JSON line
    of its per-step times out."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras
    import torch

    import fusedopt.keras

    keras.utils.set_random_seed(0)
    model = _model(keras, args.branches, args.width)
    cls = fusedopt.keras.Adam if args.worker == FUSED else keras.optimizers.Adam
    optimizer = cls(use_ema=args.use_ema)
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
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.steps * args.batch, args.width)).astype(np.float32)
    y = rng.standard_normal((args.steps * args.batch, args.width)).astype(np.float32)
    for _ in sys.stdin:
        applies.clear(), steps.clear()
        model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0,
                  callbacks=[StepClock()])
        print(json.dumps({"apply_s": applies, "step_s": steps,
                          "threading_layer": _threading_layer(),
                          "variables": len(model.trainable_variables),
                          "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
                          "torch_threads": torch.get_num_threads()}), flush=True)


def _threading_layer() -> str:
    """Numba's threading layer in this process (none until a parallel kernel has run)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "none started"


class Worker:
    """One contender's process, asked for one fit at a time."""

    def __init__(self, name: str, argv: list[str], env: str):
        settings = [item for item in env.split(",") if item]
        environment = dict(os.environ, **dict(item.split("=", 1) for item in settings))
        self.name = name
        self.process = subprocess.Popen([sys.executable, __file__, *argv, "--worker", name],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=environment)

    def fit(self) -> dict:
        self.process.stdin.write("fit\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} worker died (exit {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def _quartiles(values) -> tuple[float, float, float]:
    q1, median, q3 = np.percentile(np.asarray(values, np.float64), [25, 50, 75])
    return float(median), float(q1), float(q3)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    if args.worker:
        worker(args)
        return 0
    envs = args.env if args.env is not None else ["", "OMP_WAIT_POLICY=PASSIVE"]
    keys = [(env, name) for env in envs for name in CONTENDERS]
    load = [os.getloadavg()[0]]
    workers = {key: Worker(key[1], _worker_argv(argv), key[0]) for key in keys}
    try:
        for w in workers.values():
            w.fit()  # warm-up: builds state, compiles kernels; not counted
        rounds: dict[tuple, list[dict]] = {key: [] for key in keys}
        for r in range(args.rounds):
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                rounds[key].append(workers[key].fit())
    finally:
        for w in workers.values():
            w.close()
    load.append(os.getloadavg()[0])
    lines = header(args, argv, rounds, load)
    for env in envs:
        lines += table(env, {name: rounds[(env, name)] for name in CONTENDERS})
    print("\n".join(lines))
    return 0


def _worker_argv(argv: list[str]) -> list[str]:
    """The driver's arguments less its --env settings (a worker gets its own environment)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--env":
            skip = True
        elif not item.startswith("--env="):
            out.append(item)
    return out


def header(args, argv, rounds, load) -> list[str]:
    from fusedopt.tools.bench import machine

    described = machine.describe()
    versions, numba = described["versions"], described["numba"]
    first = next(rs[0] for (env, name), rs in rounds.items() if name == FUSED)
    return [
        "### The optimizer's part of a Keras fit step (torch backend, CPU, float32 Adam"
        f"{', use_ema' if args.use_ema else ''})",
        "",
        "```",
        " ".join(["python benchmarks/bench_keras_fit.py", *map(shlex.quote, argv)]),
        "```",
        "",
        f"Machine: {described['cpu_model']}, {described['cpu_cores']} logical cores; "
        f"numba {versions['numba']} ({first['threading_layer']} layer, {numba['threads']} "
        f"threads), torch {versions.get('torch')} ({first['torch_threads']} threads), "
        f"keras {machine.version('keras')}, numpy {versions['numpy']}. Model: "
        f"{args.branches} Dense({args.width}) branches, {first['variables']} variables, "
        f"{first['params']:,} params, batch {args.batch}. One process per contender and "
        f"environment, kept; {args.rounds} rounds of one {args.steps}-step fit from each, "
        "rotating order, after one untimed fit. Median over rounds of each round's median "
        f"step; IQR over rounds. Load average (1 min) {load[0]:.1f} before, {load[1]:.1f} "
        "after.",
    ]


def table(env: str, rounds: dict) -> list[str]:
    apply_ms = {n: [1e3 * float(np.median(r["apply_s"])) for r in rs] for n, rs in rounds.items()}
    step_ms = {n: [1e3 * float(np.median(r["step_s"])) for r in rs] for n, rs in rounds.items()}
    ratios = [f / k for f, k in zip(apply_ms[FUSED], apply_ms[KERAS])]
    lines = [
        "",
        f"Environment: {env or 'as given'}",
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
    ratio, q1, q3 = _quartiles(ratios)
    lines += ["", f"fusedopt / Keras apply time, per round: median {ratio:.3f}, IQR "
                  f"{q1:.3f}-{q3:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}; best "
                  f"rounds {min(apply_ms[FUSED]) / min(apply_ms[KERAS]):.3f}."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
