"""How a sweep is shown: a rich table per (optimizer, dtype), and a JSON file of every sample.

Tables give, per contender, the median across repeats of the sweep and its spread
``(max - min) / median``; a figure whose spread exceeds ``results.SPREAD_LIMIT`` carries a
trailing ``~``. Every table names its method, its calls per block and the working set of
each contender against the L3 size read from the machine. The JSON keeps every block's
time of every repeat.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from itertools import groupby

from . import contenders as cs
from .results import ISOLATED, SPREAD_LIMIT, Figure
from .timing import MAX_BLOCK_S

UNSETTLED = "~"
LEGEND = (f"{UNSETTLED} = spread across repeats of the sweep above {SPREAD_LIMIT:.0%}, or "
          "measured while other work shared the machine: the figure is unsettled")

METHOD_WORDS = {
    ISOLATED: "isolated: each contender in a worker process of its own, driven round by "
              "round from the parent (no other contender's thread pool in its process)",
    "same-process": "same process: every contender in one process, sharing the param and "
                    "grad (torch's and Numba's thread pools side by side)",
}


def time_text(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def count_text(n: int) -> str:
    """2^20 for powers of two (short and exact), else 65,537."""
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else f"{n:,}"


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.3g} MiB"


def short_mib(n_bytes: int) -> str:
    x = n_bytes / 2**20
    return f"{x:.3g}M" if x < 1000 else f"{x:.0f}M"


def mark(text: str, figure: Figure | None) -> str:
    return text + (UNSETTLED if figure is not None and figure.unsettled else "")


def spread_text(figure: Figure | None) -> str:
    return "" if figure is None or figure.spread is None else f"{100 * figure.spread:.0f}%"


def times_text(figure: Figure | None) -> str:
    return "" if figure is None else mark(f"{figure.median:.2f}x", figure)


def share_text(figure: Figure | None) -> str:
    return "" if figure is None else mark(f"{100 * figure.median:.0f}%", figure)


def blocks_text(inner: list[int]) -> str:
    """Calls per block over the repeats: '57' or '40-57'."""
    if not inner:
        return "-"
    low, high = min(inner), max(inner)
    return str(low) if low == high else f"{low}-{high}"


def set_text(result, l3: int | None) -> str:
    """One contender's working set, and whether it fits the L3."""
    if l3 is None:
        return short_mib(result.contender_bytes)
    return f"{short_mib(result.contender_bytes)} {'in' if result.contender_bytes <= l3 else '>'} L3"


def method_line(outcome, l3: int | None, l3_source: str) -> str:
    s = outcome.settings
    cache = f"L3 {mib(l3)} (from {l3_source})" if l3 else f"L3 unknown ({l3_source})"
    blocks = (f"{s.calls_per_block} calls per block" if s.calls_per_block else
              f"calls per block chosen per case so the fastest contender's block lasts "
              f">= {time_text(s.min_sample_s)} and the slowest one's <= "
              f"{time_text(MAX_BLOCK_S)}")
    return (f"Method: {METHOD_WORDS[s.method]}. {s.repeats_of_sweep} repeat(s) of the sweep x "
            f"{s.rounds} interleaved rounds per case; {blocks}. Working set = param, grad "
            f"and state of one contender; {cache}.")


def drift_line(outcome) -> str | None:
    d = outcome.drift
    if d is None:
        return None
    verdict = ("DRIFT ABOVE 20%: the machine changed during the run; figures are suspect"
               if d.exceeded else "within 20%")
    return (f"Ceiling drift ({d.case}): {d.start_gb_per_s:.1f} GB/s at the start, "
            f"{d.end_gb_per_s:.1f} GB/s at the end ({100 * d.change:+.0f}%): {verdict}.")


def _figure(f: Figure | None) -> dict | None:
    return None if f is None else {"median": f.median, "spread": f.spread,
                                   "unsettled": f.unsettled, "per_repeat": list(f.values)}


def contender_row(result, name: str) -> dict:
    """Everything reported about one contender of one case."""
    t = result.time(name)
    return {
        "samples_s": [run.samples[name] for run in result.runs],
        "median_s": t.median, "spread": t.spread, "unsettled": t.unsettled,
        "per_repeat_median_s": list(t.values),
        "min_s": min(min(run.samples[name]) for run in result.runs),
        "max_s": max(max(run.samples[name]) for run in result.runs),
        "gb_per_s": result.gb_per_s(name),
        "fraction_of_ceiling": _figure(result.fraction_of_ceiling(name)),
        "speedup_vs_unfused": _figure(result.ratio(name, cs.UNFUSED)),
        "speedup_vs_torch_fused": _figure(result.ratio(name, cs.TORCH_FUSED)),
    }


def to_dict(outcome, machine: dict) -> dict:
    d = outcome.drift
    return {
        "machine": machine,
        "settings": asdict(outcome.settings),
        "method": outcome.settings.method,
        "processes": outcome.processes,
        "load_average": outcome.load_average,
        "spread": "(max - min) / median of the per-repeat medians; unsettled above "
                  f"{SPREAD_LIMIT}",
        "contention": None if outcome.contention is None else outcome.contention.to_dict(),
        "drift": None if d is None else {
            "probe": d.case, "start_gb_per_s": d.start_gb_per_s,
            "end_gb_per_s": d.end_gb_per_s, "change": d.change, "exceeded": d.exceeded},
        "bytes_formula": "bytes = n * (read_bytes + write_bytes); read: param, grad and every "
                         "state slot; written: param and every state slot",
        "cases": [{
            "optimizer": r.optimizer, "size": r.size, "dtype": r.dtype, "backend": r.backend,
            "method": r.method,
            "read_bytes_per_element": r.traffic.read_bytes,
            "write_bytes_per_element": r.traffic.write_bytes,
            "bytes_per_step": r.bytes, "calls_per_block": r.inner,
            "contender_working_set_bytes": r.contender_bytes,
            "all_contenders_working_set_bytes": r.working_set,
            "notes": r.notes,
            "contenders": {n: contender_row(r, n) for n in r.names},
        } for r in outcome.results],
    }


def write_json(path, outcome, machine: dict) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(outcome, machine), f, indent=1)


COLUMNS = ("n", "block", "set", "contender", "median", "spread", "GB/s", "of\nceiling",
           "vs\nunfused", "vs torch\nfused")
#: A terminal too narrow for every column gets two tables: these columns, then the others
#: with the first and the contender's name again.
FIRST_PART = 7


def _cells(r, name: str) -> list[str]:
    t = r.time(name)
    return [name, mark(time_text(t.median), t), spread_text(t), mark(f"{r.gb_per_s(name):.1f}", t),
            share_text(r.fraction_of_ceiling(name)), times_text(r.ratio(name, cs.UNFUSED)),
            times_text(r.ratio(name, cs.TORCH_FUSED))]


def _rows(group, l3: int | None) -> list[tuple[list[str], bool]]:
    """(cells under COLUMNS, ends a case) for every contender of every case of ``group``."""
    out = []
    for r in group:
        for i, name in enumerate(r.names):
            head = ([count_text(r.size), blocks_text(r.inner), set_text(r, l3)]
                    if i == 0 else ["", "", ""])
            out.append((head + _cells(r, name), i == len(r.names) - 1))
        if not r.names:
            out.append(([count_text(r.size), "-", "-", "-", *[""] * 6], True))
    return out


def plain_table(columns, rows) -> list[str]:
    """Text lines of a table, columns padded to their widest cell, nothing cut: what is
    printed when the output is not a terminal (a pipe, a file) or with ``--plain``."""
    head = [c.replace("\n", " ") for c in columns]
    widths = [max([len(h), *(len(cells[k]) for cells, _ in rows)]) for k, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if h == "contender" else c.rjust(w)
                         for c, w, h in zip(cells, widths, head)).rstrip()
    out = [line(head), "  ".join("-" * w for w in widths)]
    for cells, end in rows:
        out.append(line(cells))
        if end:
            out.append("")
    return out


def _rich_table(columns, rows):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="left" if column == "contender" else "right",
                         no_wrap=True, min_width=max(map(len, column.split("\n"))))
    for cells, end in rows:
        table.add_row(*cells, end_section=end)
    return table


def _fits(console, table) -> bool:
    from rich.measure import Measurement
    wide = console.options.update_width(1 << 16)  # the table's own width, not the console's
    return Measurement.get(console, wide, table).maximum <= console.width


def print_tables(console, outcome, l3: tuple[int | None, str], plain: bool | None = None) -> None:
    """One table per (optimizer, dtype). On a terminal, rich tables at the terminal's width
    (split in two where one would not fit); otherwise (``plain``, default: when the output
    is not a terminal) plain text, every cell whole, whatever the width."""
    plain = not console.is_terminal if plain is None else plain
    caption = ("median across repeats; spread (max-min)/median; block = calls per block; set "
               "= one contender's arrays; vs X = X's time / this one's (> 1: faster than X); "
               f"{LEGEND}")
    for (optimizer, dtype), group in groupby(outcome.results, key=lambda r: (r.optimizer, r.dtype)):
        group = list(group)
        flow = group[0].traffic
        title = (f"{optimizer} {dtype} on {group[0].backend}: {flow.read_bytes} B read + "
                 f"{flow.write_bytes} B written per element")
        rows = _rows(group, l3[0])
        if plain:
            for text in [title, *plain_table(COLUMNS, rows), caption]:
                console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(title, markup=False, highlight=False, style="italic")
            table = _rich_table(COLUMNS, rows)
            if _fits(console, table):
                console.print(table)
            else:
                keep = (0, 3)  # n and contender, in both parts
                second = [k for k in range(len(COLUMNS)) if k in keep or k >= FIRST_PART]
                console.print(_rich_table(COLUMNS[:FIRST_PART],
                                          [(c[:FIRST_PART], e) for c, e in rows]))
                console.print(_rich_table([COLUMNS[k] for k in second],
                                          [([c[k] for k in second], e) for c, e in rows]))
            console.print(caption, markup=False, highlight=False, style="dim")
        for note in sorted({n for r in group for n in r.notes}):
            console.print(f"  note: {note}", markup=False, highlight=False,
                          soft_wrap=plain, style=None if plain else "dim")
    console.print(method_line(outcome, *l3), markup=False, highlight=False)
    line = drift_line(outcome)
    if line:
        console.print(line, markup=False, highlight=False,
                      style="bold red" if outcome.drift.exceeded else None)
    if outcome.contention is not None:
        console.print(outcome.contention.line(), markup=False, highlight=False,
                      style="bold red" if outcome.contention.busy else None)


def markdown_table(results, l3: int | None) -> list[str]:
    """The rich table's content as markdown rows (for benchmarks/RESULTS.md)."""
    head = [c.replace("\n", " ") for c in COLUMNS]
    lines = ["| optimizer | dtype | " + " | ".join(head) + " |",
             "|---|---|" + "|".join("---:" if c not in ("contender",) else "---"
                                    for c in head) + "|"]
    for r in results:
        for i, name in enumerate(r.names):
            first = i == 0
            lines.append("| " + " | ".join([
                r.optimizer if first else "", r.dtype if first else "",
                count_text(r.size) if first else "", blocks_text(r.inner) if first else "",
                set_text(r, l3) if first else "", *_cells(r, name)]) + " |")
    return lines


def results_from_json(data: dict):
    """The :class:`~.results.Result` list a :func:`to_dict` dump holds (to plot it again)."""
    from .results import Result, Run
    from .traffic import Traffic

    out = []
    for case in data["cases"]:
        names = list(case["contenders"])
        n_runs = min((len(case["contenders"][n]["samples_s"]) for n in names), default=0)
        runs = [Run(case["calls_per_block"][i],
                    {n: case["contenders"][n]["samples_s"][i] for n in names})
                for i in range(n_runs)]
        r = Result(case["optimizer"], case["size"], case["dtype"], case["backend"],
                   Traffic(case["read_bytes_per_element"], case["write_bytes_per_element"]),
                   case.get("method", ISOLATED), runs, list(case["notes"]),
                   case.get("contender_working_set_bytes", 0),
                   case.get("all_contenders_working_set_bytes", 0))
        out.append(r)
    return out
