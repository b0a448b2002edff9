"""How a sweep is shown: a rich table per (optimizer, dtype), and a JSON file of every sample.

The table shows medians and interquartile ranges; the JSON keeps every sample with the
min and max as well.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from itertools import groupby

from . import contenders as cs


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _count(n: int) -> str:
    """2^20 for powers of two (short and exact), else 65,537."""
    return f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else f"{n:,}"


def _times(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def _share(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.0f}%"


def contender_row(result, name: str) -> dict:
    """Everything reported about one contender of one case."""
    s = result.summary(name)
    return {
        "samples_s": result.samples[name],
        "median_s": s.median, "q1_s": s.q1, "q3_s": s.q3, "min_s": s.low, "max_s": s.high,
        "gb_per_s": result.gb_per_s(name),
        "fraction_of_ceiling": result.fraction_of_ceiling(name),
        "speedup_vs_unfused": result.ratio(name, cs.UNFUSED),
        "speedup_vs_torch_fused": result.ratio(name, cs.TORCH_FUSED),
    }


def to_dict(results, machine: dict, settings) -> dict:
    return {
        "machine": machine,
        "settings": asdict(settings),
        "bytes_formula": "bytes = n * (read_bytes + write_bytes); read: param, grad and every "
                         "state slot; written: param and every state slot",
        "cases": [{
            "optimizer": r.optimizer, "size": r.size, "dtype": r.dtype, "backend": r.backend,
            "read_bytes_per_element": r.traffic.read_bytes,
            "write_bytes_per_element": r.traffic.write_bytes,
            "bytes_per_step": r.bytes, "calls_per_sample": r.inner, "notes": r.notes,
            "contenders": {n: contender_row(r, n) for n in r.names},
        } for r in results],
    }


def write_json(path, results, machine: dict, settings) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(results, machine, settings), f, indent=1)


def print_tables(console, results) -> None:
    from rich import box
    from rich.table import Table

    def key(r):
        return (r.optimizer, r.dtype)

    for (optimizer, dtype), group in groupby(results, key=key):
        group = list(group)
        flow = group[0].traffic
        title = (f"{optimizer} {dtype} on {group[0].backend}: {flow.read_bytes} B read + "
                 f"{flow.write_bytes} B written per element")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=title,
                      caption="median of interleaved rounds; IQR its spread; vs X = X's median "
                              "time / this one's (> 1: faster than X)")
        for column in ("n", "contender", "median", "IQR", "GB/s", "of\nceiling",
                       "vs\nunfused", "vs torch\nfused"):
            table.add_column(column, justify="left" if column == "contender" else "right",
                             no_wrap=True, min_width=max(map(len, column.split("\n"))))
        for r in group:
            for i, name in enumerate(r.names):
                s = r.summary(name)
                table.add_row(_count(r.size) if i == 0 else "", name, _time(s.median),
                              _time(s.q3 - s.q1), f"{r.gb_per_s(name):.1f}",
                              _share(r.fraction_of_ceiling(name)),
                              _times(r.ratio(name, cs.UNFUSED)),
                              _times(r.ratio(name, cs.TORCH_FUSED)),
                              end_section=i == len(r.names) - 1)
            if not r.names:
                table.add_row(_count(r.size), "-", *[""] * 6, end_section=True)
        console.print(table)
        notes = sorted({n for r in group for n in r.notes})
        for note in notes:
            console.print(f"  [dim]note: {note}[/dim]")
