"""CUDA-event timing: medians of interleaved samples, each a block of back-to-back calls."""

from __future__ import annotations

import math

import numpy as np

#: Untimed calls first (compilation, module load, table upload, torch state).
WARMUP_CALLS = 3
#: Samples per contender; a sample lasts at least MIN_SAMPLE_S (capped at MAX_CALLS calls).
SAMPLES = 7
MIN_SAMPLE_S = 2e-3
MAX_CALLS = 200


class EventClock:
    """Elapsed device time between two events on the current stream (CuPy's or torch's)."""

    def __init__(self, kind: str):
        self.kind = kind
        if kind == "torch":
            import torch
            self._new = lambda: torch.cuda.Event(enable_timing=True)
        else:
            import cupy
            self._new = cupy.cuda.Event

    def time(self, step, calls: int) -> float:
        start, end = self._new(), self._new()
        start.record()
        for _ in range(calls):
            step()
        end.record()
        end.synchronize()
        if self.kind == "torch":
            ms = start.elapsed_time(end)
        else:
            import cupy
            ms = cupy.cuda.get_elapsed_time(start, end)
        return ms / 1e3 / calls


class Timed:
    def __init__(self, name: str, step, clock: EventClock):
        self.name, self.step, self.clock = name, step, clock
        self.samples: list[float] = []
        self.calls = 1

    def warm(self) -> None:
        for _ in range(WARMUP_CALLS):
            self.step()
        first = self.clock.time(self.step, 1)
        self.calls = int(min(MAX_CALLS, max(1, math.ceil(MIN_SAMPLE_S / max(first, 1e-7)))))

    @property
    def median(self) -> float:
        return float(np.median(self.samples))


def interleave(contenders, samples: int = SAMPLES) -> None:
    """Round r times each contender once, starting from contender r mod k."""
    k = len(contenders)
    for r in range(samples):
        for j in range(k):
            c = contenders[(r + j) % k]
            c.samples.append(c.clock.time(c.step, c.calls))
