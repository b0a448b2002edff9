"""The plain step: the full step (fusedopt/engine/step.py) without the phases that would find
nothing to do, and without finding again, step after step, what it found the step before.

Most steps of an elementwise optimizer on the host need only three of the full step's
phases: the plan (the grads' layout test, the launch groups), the scalars and the
launches. The others - where a loss-scaled step is decided, the grad pre-pass, the
factored moments, the reductions, the moving averages - each return at once when their own
conditions say so, but on a small step their calls, and the launch phase's search for each
launch's rows, grad clip and backend variant, are most of the host time (benchmarks/
RESULTS.md, "The 1k-element step's host time"). So a plain step checks those conditions
first, at every step, and keeps what its launches were: for each, the backend's launcher
(fusedopt/backends/cpu/backend.py: the variant and the table it steps, the object the
backend's own ``step`` runs through), its hyperparameter group and its grad clip. The
next plain step over the same positions launches them again, after checking that the full
step would launch the same: the same plan (found in the full step's cache, and the grads
pass its layout test), the same launch groups (found by the full step's lookup, with the
step counts as they are now), the same hyperparameter group objects (a change of any
value makes a new one) and the same clipping. What each step reads anew - the scalars of
its steps, computed from the hyperparameters and checked before any launch, the grads'
addresses, the thread count - it reads as the full step does, through the same functions.

Anything else takes the full step, which forgets what was kept: a loss scale or the
caller's ``found_inf``, eval(), clipping by norm, a matrix pass, factored moments,
reductions, running scalars, moving averages, a backend that may decide a step on the
device or has no launchers, a first step of these positions. ``config.PLAIN_STEP`` False
sends every step through the full step (tests compare the two bit for bit:
tests/test_plain_step.py).
"""

from __future__ import annotations

from .. import config
from . import threads as _threads
from .clip import launch_clip
from .reductions import signed


class PlainSteps:
    """The plain step of an :class:`~fusedopt.engine.engine.Engine`."""

    #: The launches of the last plain step (:class:`_Kept`), None after any other step.
    _kept = None

    def step(self, grads, positions=None, *, grad_scale=None, found_inf=None):
        if grad_scale is None and found_inf is None and config.PLAIN_STEP:
            if self._plain_step(grads, positions):
                return True
        self._kept = None
        return super().step(grads, positions, grad_scale=grad_scale, found_inf=found_inf)

    def _plain_step(self, grads, positions) -> bool:
        """The step, when it is plain, as the full step would take it; False (nothing
        done) when it is not."""
        spec = self.spec
        if (self.evaluating or self.ema is not None or self._window is not None
                or self.clipping.by_norm or spec.matrix is not None
                or spec.factored is not None or spec.reductions is not None
                or spec.running is not None):
            return False
        positions = tuple(range(len(self.params))) if positions is None else tuple(positions)
        grads = list(grads)
        if len(grads) != len(positions):
            return False
        kept = self._kept
        if kept is not None and kept.positions == positions and self._holds(kept, grads):
            work = [grads if e.launch.members is None
                    else [grads[i] for i in e.launch.members] for e in kept.entries]
        else:
            self._kept = None
            plan = self._plans.get(positions)
            if plan is None or getattr(plan.backend, "DEVICE_FLAGS", False) \
                    or not hasattr(plan.backend, "launcher"):
                return False  # a first step of these positions, or not a CPU step
            plan, work, launches = self._plan_step(positions, grads)
            kept = self._keep(plan, positions, launches, work)
            if kept is None:
                return False
            work = [g for _, g in work]
        rows = self._plain_rows(kept, positions)  # every launch's, checked before any runs
        guard = _threads.guard(kept.plan.backend)
        for entry, g, (row, t) in zip(kept.entries, work, rows):
            with guard:
                entry.launcher(g, row, t, entry.clip)
        self._confirm(positions, True)
        self._kept = kept
        return True

    def _holds(self, kept: _Kept, grads: list) -> bool:
        """Whether the full step would launch ``kept``'s launches with ``grads``: the plan
        of its positions is the one kept and takes the grads (the full step's layout test),
        the launch groups found for the step counts as they are are the ones kept, and so
        are the clipping and each launch's hyperparameter group."""
        plan, hypers = kept.plan, self.hypers
        if self._plans.get(kept.positions) is not plan or self.clipping is not kept.clipping:
            return False
        for e in kept.entries:
            if e.launch.hyper >= len(hypers) or hypers[e.launch.hyper] is not e.hyper_group:
                return False
        return (plan.takes(grads, self.params, self._index)
                and self._launches(plan.backend, kept.positions, plan.grad_dtypes)
                is kept.launches)

    def _keep(self, plan, positions: tuple, launches: list, work: list) -> _Kept | None:
        """What a plain step launches, for ``launches`` of this step (``work``: each with
        its grads); None where the full launch phase must run (a backend without
        launchers, a launch on a device, a group with moving averages)."""
        launcher = getattr(plan.backend, "launcher", None)
        if launcher is None:
            return None
        entries, limit = [], self.clipping.limit
        for launch, g in work:
            if launch.device is not None or launch.group.averaged:
                return None
            hyper = self.hypers[launch.hyper]
            clip = launch_clip(signed(self, launch, None), limit)
            entries.append(_Entry(launch, hyper, clip,
                                  launcher(self.spec, hyper.flags, launch.group, g, clip)))
        return _Kept(positions, plan, launches, self.clipping, entries)

    def _plain_rows(self, kept: _Kept, positions: tuple) -> list:
        """Each launch's (scalar row, 1-based step), the rows computed in float64 and
        checked as the full step's scalar phase does (a launch's tensors share their step:
        the launch groups are split by step count)."""
        counts = self._steps if self.per_param_steps else None
        cache: dict = {}
        out = []
        for entry in kept.entries:
            t = (counts[positions[entry.first]] if counts is not None
                 else self._iterations) + 1
            out.append((self._cached_row(cache, entry.launch, t, checked=True), t))
        return out


class _Kept:
    """The launches of a plain step over ``positions``, with what the full step would
    find them by."""

    __slots__ = ("positions", "plan", "launches", "clipping", "entries")

    def __init__(self, positions: tuple, plan, launches: list, clipping, entries: list):
        self.positions, self.plan, self.launches = positions, plan, launches
        self.clipping, self.entries = clipping, entries


class _Entry:
    """One launch kept (the full step's launch, which the kept launch groups hold), the
    index of its first member in the step's positions, its hyperparameter group object,
    its grad clip and the backend's launcher."""

    __slots__ = ("launch", "first", "hyper_group", "clip", "launcher")

    def __init__(self, launch, hyper_group, clip, launcher):
        self.launch, self.hyper_group, self.clip, self.launcher = (launch, hyper_group, clip,
                                                                   launcher)
        self.first = 0 if launch.members is None else launch.members[0]
