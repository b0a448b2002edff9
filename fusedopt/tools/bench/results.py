"""What a case measured, over every repeat of the sweep, and how it is summarised.

A :class:`Result` holds one :class:`Run` per repeat of the sweep: the calls per block used
and every block's seconds per call, by contender. Each run gives one median per contender;
the figures reported are the median of those medians, and their spread
``(max - min) / median`` across repeats. Ratios (fraction of the ceiling, speedups) are
taken within each run (the contenders of one run shared its noisy moments) and then
summarised the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import contenders as cs
from .traffic import Traffic

#: A figure whose spread across repeats exceeds this is marked unsettled in tables.
SPREAD_LIMIT = 0.15

ISOLATED, SAME_PROCESS = "isolated", "same-process"
METHODS = (ISOLATED, SAME_PROCESS)


@dataclass(frozen=True)
class Figure:
    """A median across repeats and its spread (None with fewer than two repeats);
    ``busy``: measured while other work shared the machine (fusedopt/tools/bench/contention.py),
    so never settled, whatever its spread."""

    median: float
    spread: float | None
    values: tuple[float, ...]
    busy: bool = False

    @classmethod
    def of(cls, values, busy: bool = False) -> "Figure":
        v = np.asarray(values, dtype=np.float64)
        median = float(np.median(v))
        spread = float((v.max() - v.min()) / median) if len(v) > 1 and median else None
        return cls(median, spread, tuple(float(x) for x in v), busy)

    @property
    def unsettled(self) -> bool:
        return self.busy or (self.spread is not None and self.spread > SPREAD_LIMIT)


@dataclass
class Run:
    """One repeat of one case: calls per block, and seconds per call of every block."""

    inner: int
    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        return float(np.median(self.samples[name]))


@dataclass
class Result:
    optimizer: str
    size: int
    dtype: str
    backend: str
    traffic: Traffic
    method: str = ISOLATED
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Bytes each contender's arrays take, and all of them together.
    contender_bytes: int = 0
    working_set: int = 0
    #: Measured on a busy machine: no figure of it is settled.
    busy: bool = False

    @property
    def bytes(self) -> int:
        return self.traffic.total(self.size)

    @property
    def names(self) -> list[str]:
        """Contenders measured in every run, in display order."""
        if not self.runs:
            return []
        order = [*cs.ORDER, *(n for n in self.runs[0].samples if n not in cs.ORDER)]
        return [n for n in order if all(n in run.samples for run in self.runs)]

    @property
    def inner(self) -> list[int]:
        return [run.inner for run in self.runs]

    def merge(self, other: "Result") -> None:
        """Take ``other``'s runs and new notes (the same case, a later repeat)."""
        self.runs.extend(other.runs)
        self.notes.extend(n for n in other.notes if n not in self.notes)

    def time(self, name: str) -> Figure:
        """Seconds per call: median over repeats of each run's median."""
        return Figure.of([run.median(name) for run in self.runs], self.busy)

    def gb_per_s(self, name: str) -> float:
        return self.bytes / self.time(name).median / 1e9

    def ratio(self, name: str, baseline: str) -> Figure | None:
        """baseline's time over ``name``'s (> 1: ``name`` is faster), run by run."""
        if name not in self.names or baseline not in self.names:
            return None
        return Figure.of([run.median(baseline) / run.median(name) for run in self.runs],
                         self.busy)

    def fraction_of_ceiling(self, name: str) -> Figure | None:
        """Share of the traffic ceiling's bandwidth ``name`` reaches (same bytes: a time ratio)."""
        return self.ratio(name, cs.CEILING)
