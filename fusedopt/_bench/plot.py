"""A PNG of bandwidth against size: one subplot per optimizer, one line per contender and dtype."""

from __future__ import annotations

from . import contenders as cs

_LINESTYLES = {"float32": "-", "float64": ":"}
_BOUND_LINESTYLES = {"float32": "--", "float64": "-."}


def write_png(path, results) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    optimizers = list(dict.fromkeys(r.optimizer for r in results))
    fig, axes = plt.subplots(len(optimizers), 1, figsize=(8, 3.6 * len(optimizers)),
                             squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(cs.ORDER)}
    for ax, optimizer in zip(axes[:, 0], optimizers):
        mine = [r for r in results if r.optimizer == optimizer]
        for dtype in dict.fromkeys(r.dtype for r in mine):
            rows = [r for r in mine if r.dtype == dtype]
            for name in cs.ORDER:
                points = [(r.size, r.gb_per_s(name)) for r in rows if name in r.samples]
                if not points:
                    continue
                xs, ys = zip(*points)
                bound = name in (cs.CEILING, cs.COPY)
                ax.plot(xs, ys, marker="." if not bound else None, color=colors[name],
                        linestyle=(_BOUND_LINESTYLES if bound else _LINESTYLES).get(dtype, "-"),
                        linewidth=2.2 if bound else 1.4, label=f"{name} ({dtype})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements per tensor")
        ax.set_ylabel("GB/s (optimizer bytes / time)")
        ax.set_title(f"{optimizer} on {mine[0].backend}" if mine else optimizer)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
