"""The wall-time budget of ``gpucheck``: a deadline for the whole run and one per phase.

Each phase may use the time left before the run's deadline, minus what the phases after
it reserve, and at most its own ``max_s``. A phase checks :meth:`Phase.allows` before each
piece of work (a size, a case) with an estimate of its cost, and records what it skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Phase:
    name: str
    started: float
    deadline: float
    clock: Callable[[], float]
    skipped: list[str] = field(default_factory=list)

    def left(self) -> float:
        return self.deadline - self.clock()

    def allows(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()

    def skip(self, what: str, estimate_s: float | None = None) -> None:
        why = (f"estimated {estimate_s:.0f} s, {max(self.left(), 0):.0f} s left in the phase"
               if estimate_s is not None else f"{max(self.left(), 0):.0f} s left in the phase")
        self.skipped.append(f"{what} ({why})")

    def elapsed(self) -> float:
        return self.clock() - self.started


class Budget:
    """``total_s`` for the run; ``plan`` = [(phase, reserve_s, max_s)] in running order:
    ``reserve_s`` is kept free for that phase by the ones before it."""

    def __init__(self, total_s: float, plan, clock: Callable[[], float] = time.monotonic):
        self.total_s = total_s
        self.clock = clock
        self.start = clock()
        self.end = self.start + total_s
        self.plan = list(plan)

    def left(self) -> float:
        return self.end - self.clock()

    def phase(self, name: str) -> Phase:
        names = [p[0] for p in self.plan]
        i = names.index(name)
        reserved_after = sum(reserve for _, reserve, _ in self.plan[i + 1:])
        now = self.clock()
        deadline = min(self.end - reserved_after, now + self.plan[i][2])
        return Phase(name, now, max(deadline, now), self.clock)
