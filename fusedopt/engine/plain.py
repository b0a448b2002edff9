"""The plain step: the full step (fusedopt/engine/step.py) without the phases that would find
nothing to do.

Most steps of an elementwise optimizer on the host need only three of the full step's
phases: the plan (the grads' layout test, the launch groups), the scalars and the
launches. The others - where a loss-scaled step is decided, the grad pre-pass, the
factored moments, the reductions, the moving averages - each return at once when their own
conditions say so, but on a small step their calls are a good part of the host time
(benchmarks/RESULTS.md, "The 1k-element step's host time"). This step checks those
conditions first, every one at every step, and runs only the three phases, through the
same functions as the full step: the plan, the launch groups and the scalar rows are the
full step's own, found in its caches by the same lookups, and there is no second copy of
anything to keep in step. Whatever the conditions do not cover takes the full step.

``config.PLAIN_STEP`` False sends every step through the full step (tests compare the two
bit for bit: tests/test_plain_step.py).
"""

from __future__ import annotations

from .. import config


class PlainSteps:
    """The plain step of an :class:`~fusedopt.engine.engine.Engine`."""

    def step(self, grads, positions=None, *, grad_scale=None, found_inf=None):
        if grad_scale is None and found_inf is None and config.PLAIN_STEP:
            applied = self._plain_step(grads, positions)
            if applied:
                return applied
        return super().step(grads, positions, grad_scale=grad_scale, found_inf=found_inf)

    def _plain_step(self, grads, positions) -> bool:
        """The step as the full one would take it, when it is plain; False (nothing done)
        when it is not.

        Plain: no loss scale and no ``found_inf`` (the caller's), train mode, no clipping
        by norm (no grad pre-pass), no matrix pass, factored moment, reduction, running
        scalars or moving average, and a backend that decides every step on the host (no
        device flags: the CPU's), whose plan for these positions exists - the full step made
        it at a first step of them. The full step's phases then run as it runs them: the
        plan and the launch groups (:meth:`_plan_step`, with the grads' layout test), the
        scalars of every launch computed and checked before any runs (:meth:`_scalar_phase`),
        the launches (:meth:`_launch_phase`, with the grad scales, device window and
        per-tensor rows the skipped phases return for such a step), and the step count
        (:meth:`_confirm`, as the full step's finish without a window or averages)."""
        spec = self.spec
        if (self.evaluating or self.ema is not None or self._window is not None
                or self.clipping.by_norm or spec.matrix is not None
                or spec.factored is not None or spec.reductions is not None
                or spec.running is not None):
            return False
        positions = tuple(range(len(self.params))) if positions is None else tuple(positions)
        plan = self._plans.get(positions)
        if plan is None or _device_flags(plan.backend):
            return False
        grads = list(grads)
        if len(grads) != len(positions):
            return False
        plan, work, _ = self._plan_step(positions, grads)
        if _device_flags(plan.backend):  # the grads took another backend: the full step
            return False
        scalars, bases = self._scalar_phase(positions, work, None)
        none = [None] * len(work)
        self._launch_phase(plan, positions, work, none, scalars, None, -1, none, bases)
        self._confirm(positions, True)
        return True


def _device_flags(backend) -> bool:
    """Whether ``backend`` may decide a step on the device (then the decision phase runs)."""
    return getattr(backend, "DEVICE_FLAGS", False)
