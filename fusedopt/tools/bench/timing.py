"""Interleaved timing: every contender runs one block per round, in rotating order.

Interleaving spreads slow drifts (frequency scaling, other processes, thermal state) over
every contender alike instead of penalising whichever ran last. Warm-up calls (Numba
compilation, CuPy module load, torch state creation) are never timed. A sample is the mean
time of one *block* of ``inner`` back-to-back calls, ``inner`` chosen once per case so that
the fastest contender's block lasts at least ``min_sample_s`` (tiny steps are then not
dominated by the clock's resolution), unless that would make the slowest contender's block
last more than ``MAX_BLOCK_S`` (a round would then take seconds). On a GPU the device is synchronized before each clock
read.

A contender is anything with a ``name`` and ``time(inner) -> seconds per call``: a
:class:`LocalContender` runs in this process, an isolated one in a worker process of its
own (:mod:`.isolated`); :func:`interleave` drives either kind the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .machine import first_line

#: Untimed calls per contender before measuring (the first compiles or builds state).
WARMUP_CALLS = 2

#: Shortest sample worth timing, in seconds (per contender, fastest one).
MIN_SAMPLE_S = 2e-3

#: Largest number of calls folded into one sample.
MAX_INNER = 10_000

#: Longest block worth asking of the slowest contender, in seconds.
MAX_BLOCK_S = 0.05


@dataclass(frozen=True)
class Summary:
    median: float
    q1: float
    q3: float
    low: float
    high: float

    @classmethod
    def of(cls, samples) -> "Summary":
        s = np.asarray(samples, dtype=np.float64)
        q1, median, q3 = np.percentile(s, [25, 50, 75])
        return cls(float(median), float(q1), float(q3), float(s.min()), float(s.max()))


def synchronizer(backend: str) -> Callable[[], None]:
    """What to call before reading the clock: the device's synchronize on a GPU."""
    if backend == "cuda":
        import cupy
        device = cupy.cuda.Device()
        return device.synchronize
    return lambda: None


def time_block(step, inner: int, sync) -> float:
    """Seconds per call of ``inner`` back-to-back calls of ``step``."""
    sync()
    start = time.perf_counter()
    for _ in range(inner):
        step()
    sync()
    return (time.perf_counter() - start) / inner


def warm_up_one(step, sync) -> float:
    """Untimed warm-up calls, then one timed call; its seconds. Raises what the step raises."""
    for _ in range(WARMUP_CALLS):
        step()
    return time_block(step, 1, sync)


@dataclass
class LocalContender:
    """A step run in this process."""

    name: str
    step: Callable[[], None]
    sync: Callable[[], None] = lambda: None

    def time(self, inner: int) -> float:
        return time_block(self.step, inner, self.sync)


def warm_up(contenders, sync, notes: list[str]):
    """Run each contender untimed; those that fail are dropped with a note. Returns the rest
    (as :class:`LocalContender`) and one timed call's duration of each."""
    kept, first = [], []
    for c in contenders:
        try:
            first.append(warm_up_one(c.step, sync))
        except Exception as error:  # torch raises many kinds for an unsupported fused path
            notes.append(f"{c.name}: failed in warm-up, skipped ({first_line(error)})")
            continue
        kept.append(LocalContender(c.name, c.step, sync))
    return kept, first


def inner_calls(first_times, min_sample_s: float = MIN_SAMPLE_S,
                max_block_s: float = MAX_BLOCK_S) -> int:
    """Calls per block: enough that the fastest contender's block lasts ``min_sample_s``,
    but no more than keep the slowest one's within ``max_block_s`` (and at least one)."""
    fastest, slowest = max(min(first_times), 1e-9), max(max(first_times), 1e-9)
    wanted = math.ceil(min_sample_s / fastest)
    return int(max(1, min(MAX_INNER, wanted, math.floor(max_block_s / slowest))))


def interleave(contenders, rounds: int, inner: int, on_round=None) -> dict[str, list]:
    """``rounds`` rounds; round r starts at contender r mod k. Seconds per call, by name."""
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    k = len(contenders)
    for r in range(rounds):
        for j in range(k):
            c = contenders[(r + j) % k]
            samples[c.name].append(c.time(inner))
        if on_round is not None:
            on_round()
    return samples


def time_rounds(contenders, first_times, rounds: int, calls_per_block: int | None = None,
                min_sample_s: float = MIN_SAMPLE_S, on_round=None):
    """A :class:`~.results.Run`: calls per block (given, or from the first calls' times),
    then ``rounds`` interleaved rounds."""
    from .results import Run

    inner = calls_per_block or inner_calls(first_times, min_sample_s)
    return Run(inner, interleave(contenders, rounds, inner, on_round))
