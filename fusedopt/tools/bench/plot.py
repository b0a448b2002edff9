"""PNGs of bandwidth against size: a roofline picture per optimizer family (the measured
traffic ceiling drawn as the roof), or one figure with a subplot per optimizer.

Each line is a contender's median GB/s across repeats of the sweep; the shaded band spans
the slowest and the fastest repeat.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import contenders as cs

#: Families drawn together: (file suffix, title, members). An optimizer in none of them is
#: drawn in an "other" picture, so a newly registered one still appears.
FAMILIES = (
    ("adam", "Adam family", ("adam", "adamw")),
    ("sgd-rmsprop-adagrad-adadelta", "SGD, RMSprop, Adagrad, Adadelta",
     ("sgd", "rmsprop", "adagrad", "adadelta")),
    ("adamax-nadam-lion", "Adamax, Nadam, Lion", ("adamax", "nadam", "lion")),
)

_LINESTYLES = {"float32": "-", "float64": ":"}
_BOUND_LINESTYLES = {"float32": "--", "float64": "-."}
_COLORS = {name: f"C{i}" for i, name in enumerate(cs.ORDER)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def _draw(ax, optimizer: str, results) -> None:
    mine = [r for r in results if r.optimizer == optimizer and r.runs]
    for dtype in dict.fromkeys(r.dtype for r in mine):
        rows = [r for r in mine if r.dtype == dtype]
        for name in cs.ORDER:
            have = [r for r in rows if name in r.names]
            if not have:
                continue
            xs = [r.size for r in have]
            ys = [r.gb_per_s(name) for r in have]
            low = [r.bytes / max(r.time(name).values) / 1e9 for r in have]
            high = [r.bytes / min(r.time(name).values) / 1e9 for r in have]
            bound = name in (cs.CEILING, cs.COPY)
            color = _COLORS[name]
            ax.plot(xs, ys, marker=None if bound else ".", color=color,
                    linestyle=(_BOUND_LINESTYLES if bound else _LINESTYLES).get(dtype, "-"),
                    linewidth=2.4 if bound else 1.4,
                    label=f"{name} ({dtype})" + (" = roof" if name == cs.CEILING else ""))
            ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("elements per tensor")
    ax.set_ylabel("GB/s (optimizer bytes / time)")
    backend = mine[0].backend if mine else ""
    ax.set_title(f"{optimizer} on {backend}" if mine else f"{optimizer}: no figures")
    ax.grid(True, which="both", alpha=0.3)
    if mine:
        ax.legend(fontsize="x-small", ncol=2)


def write_png(path, results) -> None:
    """One figure, a subplot per optimizer (stacked)."""
    plt = _pyplot()
    optimizers = list(dict.fromkeys(r.optimizer for r in results))
    fig, axes = plt.subplots(len(optimizers), 1, figsize=(8, 3.6 * len(optimizers)),
                             squeeze=False)
    for ax, optimizer in zip(axes[:, 0], optimizers):
        _draw(ax, optimizer, results)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def families(optimizers) -> list[tuple[str, str, tuple[str, ...]]]:
    """The FAMILIES that have a member among ``optimizers`` (members limited to those),
    then "other" for the rest."""
    present = list(dict.fromkeys(optimizers))
    out, placed = [], set()
    for slug, title, members in FAMILIES:
        mine = tuple(m for m in members if m in present)
        if mine:
            out.append((slug, title, mine))
            placed.update(mine)
    rest = tuple(o for o in present if o not in placed)
    if rest:
        out.append(("other", "Other optimizers", rest))
    return out


def write_family_pngs(prefix, results) -> list[Path]:
    """``<prefix>-<family>.png`` for each family present in ``results``; the paths."""
    plt = _pyplot()
    paths = []
    backend = results[0].backend if results else ""
    for slug, title, members in families(r.optimizer for r in results):
        cols = min(2, len(members))
        rows = math.ceil(len(members) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
        for ax, optimizer in zip(axes.flat, members):
            _draw(ax, optimizer, results)
        for ax in list(axes.flat)[len(members):]:
            ax.set_visible(False)
        fig.suptitle(f"{title} on {backend}: GB/s against size, the traffic ceiling as roof "
                     "(bands: slowest to fastest repeat)", fontsize="medium")
        fig.tight_layout()
        path = Path(f"{prefix}-{slug}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
