"""Markdown for benchmarks/RESULTS.md: every block names its command, its method, the
machine, the spread across repeats and the ceiling's drift over the run."""

from __future__ import annotations

from . import contenders as cs
from .report import LEGEND, count_text, drift_line, mark, method_line, spread_text, times_text


def machine_line(described: dict) -> str:
    v, numba = described["versions"], described["numba"]
    load = described.get("load_average")
    load_text = "" if not load else f"; load average {load[0]:.2f} at the end"
    return (f"Machine: {described['cpu_model']}, {described['cpu_cores']} logical cores; "
            f"numba {v['numba']} ({numba['threading_layer']} layer, {numba['threads']} "
            f"threads), torch {v.get('torch')}, numpy {v['numpy']}{load_text}.")


def fence(command: str) -> list[str]:
    return ["```", command, "```", ""]


def preamble(outcome, described: dict, command: str) -> list[str]:
    from .machine import l3_cache

    lines = [*fence(command), machine_line(described), "",
             method_line(outcome, *l3_cache()), ""]
    drift = drift_line(outcome)
    lines += [drift, ""] if drift else []
    contention = getattr(outcome, "contention", None)
    return lines + ([contention.line(), ""] if contention is not None else [])


def notes(results) -> list[str]:
    found = sorted({n for r in results for n in r.notes})
    return [f"- note: {n}" for n in found] + ([""] if found else [])


def sweep_section(outcome, described: dict, command: str) -> str:
    from .machine import l3_cache
    from .report import markdown_table

    lines = preamble(outcome, described, command)
    lines += ["Fused step against its ceiling and torch's fused step:", "",
              *fractions_table(outcome), "", "Every contender:", "",
              *markdown_table(outcome.results, l3_cache()[0]), "", LEGEND + ".", ""]
    return "\n".join(lines + notes(outcome.results))


def fractions_table(outcome) -> list[str]:
    """One row per optimizer: at each size, fused and ceiling GB/s, the fused share of the
    ceiling (with its spread) and fused's time against torch fused's."""
    sizes = list(dict.fromkeys(r.size for r in outcome.results))
    head = ["optimizer", "bytes/elem (R+W)"]
    for n in sizes:
        head += [f"{count_text(n)} fused GB/s", f"{count_text(n)} ceiling GB/s",
                 f"{count_text(n)} fused / ceiling", "spread",
                 f"{count_text(n)} fused time / torch fused"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    by_key = {(r.optimizer, r.size): r for r in outcome.results}
    for optimizer in dict.fromkeys(r.optimizer for r in outcome.results):
        first = by_key[optimizer, sizes[0]]
        row = [optimizer, f"{first.traffic.read_bytes}+{first.traffic.write_bytes}"]
        for n in sizes:
            r = by_key.get((optimizer, n))
            if r is None or cs.FUSED not in r.names:
                row += ["-"] * 5
                continue
            share = r.fraction_of_ceiling(cs.FUSED)
            vs_torch = r.ratio(cs.TORCH_FUSED, cs.FUSED)  # fused time / torch fused time
            row += [mark(f"{r.gb_per_s(cs.FUSED):.1f}", r.time(cs.FUSED)),
                    mark(f"{r.gb_per_s(cs.CEILING):.1f}", r.time(cs.CEILING)),
                    mark(f"{share.median:.2f}", share), spread_text(share),
                    times_text(vs_torch) if vs_torch else "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    return lines

