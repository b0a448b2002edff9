"""Whether other work shared the machine while a benchmark ran, and the words that say so.

Three signs, each against the machine's cores:

- the 1-minute load average when the run starts (before any worker of the benchmark runs),
  above ``LOAD_PER_CORE`` per core;
- the CPU time other processes took during the run: the machine's busy time (``/proc/stat``)
  less this process's and its finished workers' (``os.times``), above ``OTHERS_PER_CORE``
  of the run's core-seconds;
- the drift probe (fusedopt/tools/bench/sweep.py): the ceiling's bandwidth at the end
  against the start, beyond its limit.

A run with any of them is *busy*: the report says which, and no figure of it is marked
settled, whatever its spread (results.Figure).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

#: A 1-minute load average above this many runnable processes per core: the machine is busy.
LOAD_PER_CORE = 0.5
#: Other processes' CPU time above this share of the run's core-seconds: the machine is busy.
OTHERS_PER_CORE = 0.25


def _busy_seconds() -> float | None:
    """Seconds every core spent busy (not idle or waiting on I/O) since boot; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


@dataclass
class Watch:
    """Readings at the start of a run; :meth:`verdict` takes the end's."""

    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    load_start: float | None = field(default_factory=lambda: _load_1min())
    busy_start: float | None = field(default_factory=lambda: _busy_seconds())
    own_start: float = field(default_factory=lambda: _own_seconds())
    wall_start: float = field(default_factory=lambda: time.monotonic())

    def verdict(self, drift=None) -> "Contention":
        """What the run shared the machine with, from the start to now (its workers reaped);
        ``drift``: the run's sweep.Drift, if the probe ran."""
        wall = time.monotonic() - self.wall_start
        busy_end = _busy_seconds()
        others = None
        if self.busy_start is not None and busy_end is not None and wall > 0:
            used = (busy_end - self.busy_start) - (_own_seconds() - self.own_start)
            others = max(0.0, used) / wall
        return Contention(self.cores, self.load_start, others,
                          None if drift is None else drift.change,
                          drift is not None and drift.exceeded)


@dataclass
class Contention:
    cores: int
    load_start: float | None
    #: Cores' worth of CPU other processes took during the run, on average.
    others_cores: float | None
    drift_change: float | None = None
    drift_exceeded: bool = False

    @property
    def reasons(self) -> list[str]:
        out = []
        if self.load_start is not None and self.load_start > LOAD_PER_CORE * self.cores:
            out.append(f"load average {self.load_start:.2f} on {self.cores} cores at the start")
        if self.others_cores is not None and self.others_cores > OTHERS_PER_CORE * self.cores:
            out.append(f"other processes used {self.others_cores:.2f} of {self.cores} cores "
                       "during the run")
        if self.drift_exceeded:
            out.append(f"the drift probe moved {100 * self.drift_change:+.0f}%")
        return out

    @property
    def busy(self) -> bool:
        return bool(self.reasons)

    def line(self) -> str:
        """One sentence for the report."""
        others = ("" if self.others_cores is None
                  else f", other processes {self.others_cores:.2f} cores during the run")
        load = "" if self.load_start is None else f"load average {self.load_start:.2f} at the start"
        seen = f"{load}{others} ({self.cores} cores)"
        if self.busy:
            return (f"MACHINE BUSY: {'; '.join(self.reasons)}. Figures measured on a shared "
                    "machine: none is marked settled.")
        return f"Machine quiet: {seen}."

    def to_dict(self) -> dict:
        return {"busy": self.busy, "reasons": self.reasons, "cores": self.cores,
                "load_average_start": self.load_start, "others_cores": self.others_cores,
                "drift_change": self.drift_change,
                "limits": {"load_per_core": LOAD_PER_CORE, "others_per_core": OTHERS_PER_CORE}}
