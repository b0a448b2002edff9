"""Loss curves of pure bfloat16 training: round to nearest against stochastic rounding,
Kahan summation and float32 (fusedopt/tools/demo/logistic.py: logistic regression, 8192
samples, 32 features, full-batch Adam at lr 3e-3 for 1500 steps, bfloat16 weights and
state without a master). Writes benchmarks/pure_bf16_training.png and prints the final
losses as markdown for benchmarks/RESULTS.md.

    python benchmarks/pure_bf16_training.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=Path, default=HERE / "pure_bf16_training.png")
    parser.add_argument("--seeds", type=int, default=3, help="problems (data seeds) to run")
    args = parser.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fusedopt.tools.demo import logistic

    curves = {}
    finals = {name: [] for name in logistic.RUNS}
    for seed in range(args.seeds):
        problem = logistic.make_problem(seed=seed)
        for name, (dtype, options) in logistic.RUNS.items():
            losses = logistic.train(problem, dtype, **options)
            finals[name].append(losses[-1])
            if seed == 0:
                curves[name] = losses
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, losses in curves.items():
        ax.plot(losses, label=name, linewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean binary cross-entropy)")
    ax.set_yscale("log")
    ax.set_title("Logistic regression, Adam lr 3e-3, bf16 weights and state (no master)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print("| run | final loss, data seed " + " | ".join(str(s) for s in range(args.seeds))
          + " | / float32 (seed 0) |")
    print("|---|" + "---:|" * (args.seeds + 1))
    for name, values in finals.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values)
              + f" | {values[0] / finals['float32'][0]:.3f} |")
    print(f"\nplot: {args.plot.relative_to(HERE.parent) if args.plot.is_relative_to(HERE.parent) else args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
