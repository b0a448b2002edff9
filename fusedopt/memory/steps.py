"""Which step a launch is: its scalar rows, and the loss-scaled steps still in doubt.

On the CPU every step is known when it is launched: one row of scalars, computed by the
registry's ``scalars`` for the 1-based step t. On CUDA a loss-scaled step may be skipped
on the device (a grad was inf or NaN: the grad pre-pass's sums raise a flag,
kernels/gradsums_reduce.cu, that the optimizer kernels read), and the host does not wait
to find out. Until it reads that flag back - lazily, from a copy it started without
waiting (:class:`Window`) - the step count of every later
launch is one of several: a launch then carries one row of scalars per candidate step,
still computed by the registry in double on the host, and the kernels pick theirs from
the flags of the steps in doubt (kernels/steps.cuh). So the formulas stay in one place,
and nothing waits, unless more than ``config.STEP_WINDOW`` steps are in doubt at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

#: kernels/steps.cuh: control entries before the per-tensor rows.
CONTROL_HEADER = 7


@dataclass(frozen=True)
class StepRows:
    """The scalars of one launch for every step its tensors can be at.

    Tensor t is at step ``base[t]`` plus the number of window steps in ``mask[t]`` that
    were applied; its scalars are ``rows[step - lo]``. ``flag_slot`` is this step's flag
    in the ring (-1: this step cannot be skipped); window step j's flag is in slot
    ``(first_slot + j) % ring``.
    """

    lo: int
    rows: tuple
    base: tuple
    mask: tuple
    window: int = 0
    first_slot: int = 0
    flag_slot: int = -1
    ring: int = 1
    flags: Any = field(default=None, compare=False)  # the device flag ring, if any

    @property
    def certain(self) -> bool:
        return self.window == 0 and len(self.rows) == 1 and self.flag_slot < 0

    def scalars(self) -> tuple:
        """The one row of a step known on the host (every CPU step)."""
        if not self.certain:
            raise RuntimeError("this step's count is decided on the device; only the CUDA "
                               "backend can launch it")
        return self.rows[0]

    def control(self) -> np.ndarray:
        """The control block of kernels/steps.cuh."""
        header = [self.lo, len(self.rows), len(self.rows[0]), self.window, self.flag_slot,
                  self.first_slot, self.ring]
        return np.array([*header, *self.base, *self.mask], dtype=np.int64)

    def row_array(self, dtype) -> np.ndarray:
        """Every row, as one array of the compute ``dtype`` (each double rounded once)."""
        return np.asarray(self.rows, dtype=np.float64).astype(dtype).ravel()


@dataclass(frozen=True)
class TensorScalars:
    """The scalars of a launch of an optimizer with per-tensor reductions on CUDA: the
    step's one ``row`` (known on the host) and ``values``, a float64 device array of shape
    (per-tensor scalars, tensors), made on the device by the reduction phase
    (fusedopt/engine/reductions.py); the element kernel reads both."""

    row: tuple
    values: Any


def step_rows(scalars_of: Callable[[int], tuple], base, mask, window: "Window | None" = None,
              flag_slot: int = -1) -> StepRows:
    """The rows for tensors at ``base[t]`` (+ applied window steps in ``mask[t]``)."""
    base, mask = tuple(int(b) for b in base), tuple(int(m) for m in mask)
    lo = min(base)
    hi = max(b + bin(m).count("1") for b, m in zip(base, mask))
    rows = tuple(scalars_of(t) for t in range(lo, hi + 1))
    if window is None or not window.entries:
        return StepRows(lo, rows, base, mask, flag_slot=flag_slot,
                        ring=window.ring if window else 1,
                        flags=window.flags if window else None)
    return StepRows(lo, rows, base, mask, window=len(window.entries),
                    first_slot=window.entries[0].slot, flag_slot=flag_slot, ring=window.ring,
                    flags=window.flags)


def as_rows(steps, n_tensors: int, step: int = 1) -> StepRows:
    """``steps``, or a plain tuple of scalars (known step ``step``) as its StepRows."""
    if isinstance(steps, StepRows):
        return steps
    row = tuple(steps)
    return StepRows(step, (row,), (step,) * n_tensors, (0,) * n_tensors)


@dataclass
class Doubt:
    """A loss-scaled step whose flag the host has not read: its ring slot, the positions
    it stepped, and the pending read of its flag."""

    slot: int
    positions: frozenset
    pending: Any
    applied: bool | None = None  # set once the flag has been read


class Window:
    """The loss-scaled CUDA steps still in doubt, oldest first, and their flag ring.

    ``flags`` is a device int32 array of ``ring`` slots, written by the pre-pass of each
    loss-scaled step; a slot is reused only after its step left the window, which holds
    at most ``cap`` steps (then the host waits for the oldest).
    """

    def __init__(self, flags, cap: int):
        self.flags, self.cap, self.ring = flags, cap, cap + 1
        self.entries: deque[Doubt] = deque()
        self._next = 0

    def next_slot(self) -> int:
        """The slot the next loss-scaled step writes its flag into."""
        return self._next

    def push(self, positions, pending) -> None:
        self.entries.append(Doubt(self._next, frozenset(positions), pending))
        self._next = (self._next + 1) % self.ring

    def settle(self, wait: bool = False, limit: int | None = None):
        """Pop the steps at the front whose flags have arrived (with ``wait``, waiting for
        them; at most ``limit``); yields each, oldest first, with ``applied`` set."""
        while self.entries and (limit is None or limit > 0):
            front = self.entries[0]
            if not (wait or front.pending.done()):
                return
            limit = None if limit is None else limit - 1
            front.applied = not bool(front.pending.result())
            self.entries.popleft()
            yield front

    def full(self) -> bool:
        return len(self.entries) >= self.cap

    def mask(self, position: int) -> int:
        """Bit j set when window step j stepped ``position``."""
        return sum(1 << j for j, d in enumerate(self.entries) if position in d.positions)
