"""``fusedopt bench``, ``fusedopt demo`` and ``fusedopt info`` (also ``python -m fusedopt``)."""

from __future__ import annotations

import argparse
import re
import shlex
import sys

_POWER = re.compile(r"^2(\^|\*\*)(\d+)$")
_CONTENDERS = ("fused", "unfused", "torch fused", "torch foreach", "ceiling", "copy")


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def element_count(token: str) -> int:
    """An element count: 65536, 65_536, 2^16 or 2**16."""
    token = token.strip().replace("_", "")
    match = _POWER.match(token)
    value = 2 ** int(match.group(2)) if match else int(token) if token.isdigit() else -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size is a positive element count such as 65536 "
                                         f"or 2^16, got {token!r}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(element_count(t) for t in text.split(",") if t.strip())


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="time fused steps against unfused, torch and the "
                                         "memory-traffic ceiling")
    bench.add_argument("--optimizer", type=_names,
                       help="comma-separated registry names (default: every registered one)")
    bench.add_argument("--sizes", type=_sizes,
                       help="comma-separated element counts, e.g. 1024,2^20 (default: 2^10, 2^12, "
                            "... up to 2^26 on CPU, 2^28 on GPU)")
    bench.add_argument("--dtype", type=_names, help="comma-separated: float32,float64 "
                                                    "(default: both)")
    bench.add_argument("--backend", default="auto", choices=("auto", "cpu", "cuda"),
                       help="auto: CUDA when CuPy sees a device, else CPU")
    bench.add_argument("--rounds", "--repeats", dest="rounds", type=_positive,
                       help="interleaved rounds per case in each repeat of the sweep "
                            "(default 7)")
    bench.add_argument("--repeats-of-sweep", type=_positive,
                       help="run the whole sweep this many times; tables give the median "
                            "across repeats and its spread (default 3)")
    bench.add_argument("--same-process", action="store_true",
                       help="time every contender in this process (what a user mixing torch "
                            "and fusedopt sees) instead of each in a worker process of its own")
    bench.add_argument("--calls-per-block", type=_positive,
                       help="calls timed back to back per sample (default: enough for the "
                            "fastest contender's block to last 2 ms); 1 = single calls")
    bench.add_argument("--contenders", type=_names,
                       help=f"comma-separated subset of: {', '.join(_CONTENDERS)} (the "
                            "ceiling always runs)")
    bench.add_argument("--quick", action="store_true",
                       help="a minute's sweep: 3 sizes, adam and sgd, float32, few rounds")
    bench.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    bench.add_argument("--no-probe", action="store_true",
                       help="skip the ceiling-drift probe at the start and the end")
    bench.add_argument("--plain", action="store_true",
                       help="plain-text tables, every cell whole (the default when the output "
                            "is not a terminal)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", metavar="PATH", help="write every sample and the machine")
    bench.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG of GB/s against size")
    bench.add_argument("--roofline", metavar="PREFIX",
                       help="write PREFIX-<family>.png: GB/s against size per optimizer "
                            "family, the measured ceiling drawn")

    demo = sub.add_parser("demo", help="the Keras Adam article's example, trained by fusedopt",
                          description="The Keras Adam article's model: Dense(10, relu) then "
                                      "Dense(2, softmax) on input of shape (10, 10) (batches of "
                                      "10 samples x 10 features), synthetic two-class data. With "
                                      "Keras installed: built and fitted in Keras 3 (torch "
                                      "backend) after fusedopt.keras.install(), so "
                                      "model.compile(optimizer='adam') is fusedopt's. Without "
                                      "Keras, or with --numpy: forward/backward in NumPy (CuPy "
                                      "on a GPU) and a core fusedopt optimizer.")
    demo.add_argument("--optimizer", default="adam", help="any registered name (default adam)")
    demo.add_argument("--numpy", action="store_true",
                      help="the NumPy-only demo even when Keras is installed")
    demo.add_argument("--epochs", type=_positive,
                      help="default 10 with Keras, 20 with --numpy")
    demo.add_argument("--samples", type=_positive, default=200,
                      help="synthetic training samples (batches of 10)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--compare", action="store_true",
                      help="also train with Keras' own optimizer (NumPy demo: with the unfused "
                           "backend and Keras) and print the largest weight difference")

    sub.add_parser("info", help="versions, available backends, threads and caches")
    return parser


def bench_settings(args):
    """The sweep ``args`` ask for, with --quick's values where no explicit flag overrides."""
    from ..algorithms.registry import DTYPES, REGISTRY
    from .bench import sweep

    backend = sweep.resolve_backend(args.backend)
    if args.quick:
        optimizers = tuple(o for o in sweep.QUICK_OPTIMIZERS if o in REGISTRY)
        sizes, dtypes, rounds = sweep.QUICK_SIZES, ("float32",), sweep.QUICK_ROUNDS
    else:
        # One pass per step: optimizers with per-tensor reductions take more passes, and
        # benchmarks/bench_reductions.py measures them against the ceiling of theirs.
        optimizers = tuple(n for n, spec in REGISTRY.items()
                           if spec.reductions is None and spec.matrix is None)
        sizes = sweep.default_sizes(backend)
        dtypes, rounds = ("float32", "float64"), sweep.DEFAULT_ROUNDS  # --dtype for 16-bit
    optimizers = args.optimizer or optimizers
    for name in optimizers:
        if name.lower().replace("_", "") not in REGISTRY:
            raise SystemExit(f"--optimizer: unknown optimizer {name!r}; registered: "
                             f"{', '.join(sorted(REGISTRY))}")
        if REGISTRY[name.lower().replace("_", "")].reductions is not None:
            raise SystemExit(f"--optimizer: {name} takes more than one pass a step (per-tensor "
                             "reductions); benchmarks/bench_reductions.py measures it")
        if REGISTRY[name.lower().replace("_", "")].matrix is not None:
            raise SystemExit(f"--optimizer: {name} steps 2-D params with matmuls between two "
                             "passes; benchmarks/bench_muon.py measures it")
    for d in args.dtype or ():
        if d not in DTYPES:
            raise SystemExit(f"--dtype: {d!r} is not one of {', '.join(DTYPES)}")
    for c in args.contenders or ():
        if c not in _CONTENDERS:
            raise SystemExit(f"--contenders: {c!r} is not one of {', '.join(_CONTENDERS)}")
    return sweep.Settings(optimizers=optimizers, sizes=args.sizes or sizes,
                          dtypes=args.dtype or dtypes, backend=backend,
                          rounds=args.rounds or rounds, seed=args.seed,
                          torch=not args.no_torch,
                          method="same-process" if args.same_process else "isolated",
                          repeats_of_sweep=args.repeats_of_sweep or
                          sweep.DEFAULT_REPEATS_OF_SWEEP,
                          calls_per_block=args.calls_per_block,
                          contenders=args.contenders, probe=not args.no_probe)


def bench(args, console):
    from .bench import machine, report, sweep

    settings = bench_settings(args)
    outcome = sweep.run(settings, console=console)
    l3 = machine.l3_cache()
    report.print_tables(console, outcome, l3, plain=True if args.plain else None)
    described = machine.describe(torch_threads=settings.method == "same-process")
    torch_ran = any(n.startswith("torch") for r in outcome.results for n in r.names)
    described["caveats"] = machine.caveats(described["numba"],
                                           torch_ran and settings.method == "same-process")
    for caveat in described["caveats"]:
        console.print(f"caveat: {caveat}", markup=False, highlight=False)
    if args.json:
        report.write_json(args.json, outcome, described)
        console.print(f"samples and machine description written to {args.json}")
    if args.markdown:
        from .bench import markdown
        with open(args.markdown, "w") as f:
            f.write(markdown.sweep_section(outcome, described, _command(args)))
        console.print(f"markdown tables written to {args.markdown}")
    if args.plot:
        from .bench import plot
        plot.write_png(args.plot, outcome.results)
        console.print(f"plot written to {args.plot}")
    if args.roofline:
        from .bench import plot
        for path in plot.write_family_pngs(args.roofline, outcome.results):
            console.print(f"roofline written to {path}")
    return outcome


def _command(args) -> str:
    return " ".join(["fusedopt", *map(shlex.quote, getattr(args, "argv", []))])


def demo(args, console) -> None:
    """The Keras demo when Keras (torch backend) is here and --numpy is not given."""
    from .demo import keras_article, run_demo

    why_not = "--numpy was given" if args.numpy else keras_article.keras_ready()
    try:
        if why_not is None:
            keras_article.run_keras_demo(
                args.optimizer, epochs=args.epochs or keras_article.EPOCHS,
                samples=args.samples, seed=args.seed, compare=args.compare,
                say=lambda text: console.print(text, markup=False, highlight=False))
            return
        if not args.numpy:
            console.print(f"note: the NumPy demo runs, not Keras: {why_not}", markup=False,
                          highlight=False)
        run_demo(args.optimizer, epochs=args.epochs or 20, samples=args.samples,
                 seed=args.seed, compare=args.compare, console=console)
    except ValueError as error:  # an unknown optimizer name: say which ones exist
        raise SystemExit(f"fusedopt demo: {error}") from None


def main(argv=None) -> int:
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    console = Console()
    if args.command == "bench":
        bench(args, console)
    elif args.command == "demo":
        demo(args, console)
    else:
        from .info import show
        show(console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
