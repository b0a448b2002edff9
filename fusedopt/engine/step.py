"""The step, in named phases: the arguments, the plan, the scalars, where the step is decided,
the grad pre-pass, the launches, and the finish (moving averages, step count)."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

from .. import config
from ..memory.arrays import kind_of
from ..memory.steps import Window, step_rows
from . import threads as _threads
from . import validate as _validate
from .clip import launch_clip
from .orthogonal import check_matrices, matrix_phase
from .reductions import factor_phase, grad_prepass, reduction_phase, signed

if TYPE_CHECKING:
    from .launches import Launch


class StepPhases:
    """The step of an :class:`~fusedopt.engine.engine.Engine`."""

    def step(self, grads, positions=None, *, grad_scale=None, found_inf=None):
        """One step of the params at ``positions`` (default: all, in order) with ``grads``.

        Every pair is checked before any param changes. ``grad_scale``: the grads are those
        of a loss multiplied by it; they are divided by it inside the pass, and a step with
        an inf or NaN grad changes nothing (sets ``found_inf``). ``found_inf``: the caller
        already checked the grads (torch's GradScaler does); a non-zero value skips the step
        the same way. Both may be numbers, 0-d arrays, or (CUDA) 0-d device arrays, which
        are never read on the host.

        Returns whether the step was applied: True or False, or - for a loss-scaled CUDA
        step, decided on the device - an outcome whose truth value is that (reading it
        waits for the device).

        The phases, in order: the arguments; the plan (checks, backend, launch groups); the
        scalars of every launch, in float64, checked; where the step is decided (on the
        device, or here); the grad pre-pass (norms for clipping, the inf/NaN check); the
        optimizer's per-tensor reductions, if it declares any (fusedopt/engine/reductions.py);
        the launches; the moving average and the step count.
        """
        if self.evaluating:
            raise RuntimeError(f"{self.spec.name}: the params hold the evaluation point "
                               "(eval() was called); call train() before stepping")
        call = self._arguments(grads, positions, grad_scale, found_inf)
        if call is None:  # found_inf given, set, and on the host: nothing is launched
            self._outcome = False
            return False
        positions, grads, grad_scale, found_inf, checked = call
        plan, work, launches = self._plan_step(positions, grads)
        scalars, bases = self._scalar_phase(positions, work, grad_scale)
        window, slot = self._decision(plan, launches, grad_scale, found_inf, checked)
        scales = grad_prepass(self, plan, work, window, slot, grad_scale, checked)
        if scales is None:  # an inf or NaN grad, found on the host: nothing changes
            self._outcome = False
            return False
        if found_inf is not None:  # the caller's device flag becomes this step's flag
            plan.backend.copy_flag(found_inf, window.flags, slot)
        if self.spec.matrix is not None:  # Muon: fusedopt/engine/orthogonal.py
            matrix_phase(self, plan, positions, work, scales, scalars)
            averaged = []
        else:
            factor_phase(self, plan, positions, work, scales, scalars)
            per_tensor = reduction_phase(self, plan, positions, work, scales, scalars)
            averaged = self._launch_phase(plan, positions, work, scales, scalars, window,
                                          slot, per_tensor, bases)
        return self._finish(plan, positions, window, slot, averaged)

    def check(self, grads, positions=None) -> None:
        """Every check :meth:`step` makes of ``grads`` at ``positions`` and of the
        hyperparameters, with nothing launched and nothing changed: a front door that takes
        one step with several engines (fusedopt/keras/_routed.py) checks them all before
        stepping any."""
        positions, grads, *_ = self._arguments(grads, positions, None, None)
        plan, work, _ = self._plan_step(positions, grads)
        self._scalar_phase(positions, work, None)
        if self.spec.matrix is not None:
            check_matrices(self, plan, work)

    def _arguments(self, grads, positions, grad_scale, found_inf):
        """The step's arguments checked and normalised, or None for a step the caller's
        host ``found_inf`` skips (checked before the grads, as torch's fused optimizers)."""
        positions = tuple(range(len(self.params))) if positions is None else tuple(positions)
        grads = list(grads)
        if len(grads) != len(positions):
            raise ValueError(f"got {len(grads)} grads for {len(positions)} params")
        if not positions:
            raise ValueError("a step needs at least one (grad, param) pair")
        if grad_scale is not None:
            grad_scale = _as_grad_scale(grad_scale)
        checked = found_inf is not None
        if checked and not self._decided_on_device_allowed():  # decided here: see _decision
            found_inf = float(found_inf)
        if checked and _on_host(found_inf):
            if float(found_inf) != 0.0:
                return None
            found_inf = None
        return positions, grads, grad_scale, found_inf, checked

    def _plan_step(self, positions, grads):
        """The plan (full checks on a first step of these positions or an unusual grad,
        else a layout test), the launch groups, and each launch's grads."""
        plan = self._plans.get(positions)
        if plan is None or not plan.takes(grads, self.params, self._index):
            plan, grads = self._plan(positions, grads)
        launches = self._launches(plan.backend, positions, plan.grad_dtypes)
        work = [(launch, grads if launch.members is None else
                 [grads[i] for i in launch.members]) for launch in launches]
        return plan, work, launches

    def _scalar_phase(self, positions, work, grad_scale) -> tuple[dict, list]:
        """Every launch's scalars, computed (float64) and checked before any launch runs:
        ``(rows by (hyper group, decays, step), each launch's 1-based steps)``."""
        scalars: dict = {}
        bases = []
        for launch, _ in work:
            base = self._base_steps(positions, launch)
            bases.append(base)
            for t in set(base):
                self._cached_row(scalars, launch, t, checked=True, grad_scale=grad_scale
                                 if isinstance(grad_scale, float) else None)
        return scalars, bases

    def _decision(self, plan, launches, grad_scale, found_inf, checked):
        """Where a loss-scaled step is decided: ``(window, slot)`` of the device's flag ring
        when the device decides it, else ``(None, -1)``."""
        if not getattr(plan.backend, "DEVICE_FLAGS", False):  # the CPU's: decided here
            return None, -1
        on_device = (self._decided_on_device_allowed()
                     and len({launch.device for launch in launches}) == 1)
        decide_on_device = on_device and (found_inf is not None or (
            grad_scale is not None and not checked))
        if on_device:
            self._settle()
        window = self._device_window(plan.backend, launches[0]) if decide_on_device else None
        if window is not None and window.full():
            self._settle(wait=True, limit=1)  # as many in doubt as the rows cover: wait
        return window, (window.next_slot() if window is not None else -1)

    def _decided_on_device_allowed(self) -> bool:
        """Whether a loss-scaled step of this optimizer may be decided on the device. Not
        when the next step's scalars hang on the outcome: running scalars (schedule-free's
        weight sum) advance only with an applied step, and per-tensor reductions
        (fusedopt/engine/reductions.py) and a matrix transform (orthogonal.py) take the
        step's one row, which must be known. The host then reads the inf/NaN test (one wait
        per loss-scaled step)."""
        return (self.spec.running is None and self.spec.reductions is None
                and self.spec.matrix is None)

    def _launch_phase(self, plan, positions, work, scales, scalars, window, slot,
                      per_tensor, bases) -> list:
        """One backend step per launch (``per_tensor``: its rows of scalars, one per
        tensor, from the reduction phase, or None; ``bases``: its tensors' steps); returns
        the positions whose moving average the step's own pass updated."""
        limit = self.clipping.limit
        averaged: list = []
        guard = _threads.guard(plan.backend)
        for (launch, g), scale, tensor_rows, base in zip(work, scales, per_tensor, bases):
            rows = (tensor_rows if tensor_rows is not None
                    else self._step_rows(positions, launch, window, slot, scalars, base))
            first = positions[0 if launch.members is None else launch.members[0]]
            t = (self._steps[first] if self.per_param_steps else self._iterations) + 1
            with launch.kind.launch_context(launch.device), guard:
                scale = signed(self, launch, scale)
                average = None
                if launch.group.averaged:
                    average = self.ema.scalars(self.params[first], self._iterations)
                    averaged.extend(positions if launch.members is None
                                    else (positions[i] for i in launch.members))
                clip = launch_clip(scale, limit)
                plan.backend.step(self.spec, self.hypers[launch.hyper].flags, rows,
                                  launch.group, g, clip=clip, step=t,
                                  **({} if average is None else {"average": average}))
        return averaged

    def _finish(self, plan, positions, window, slot, averaged):
        """The moving averages the pass did not update, and the step count (or, decided on
        the device, the step's outcome to read later)."""
        if window is not None:
            window.push(positions, plan.backend.read_later(window.flags[slot: slot + 1]))
            self._outcome = window.entries[-1]
            outcome = _Outcome(self, self._outcome)
            if self.ema is not None and outcome:  # the average needs the outcome: wait
                self.ema.update(self.params, self.averages, self._iterations - 1)
            return outcome
        if self.ema is not None:  # every param's average, as Keras: those the pass did not
            self.ema.update(self.params, self.averages, self._iterations, done=averaged)
        self._confirm(positions, True)
        return True

    def _device_window(self, backend, launch) -> Window:
        """The flag ring of loss-scaled CUDA steps (made on the params' device at first use)."""
        if self._window is None:
            with launch.kind.launch_context(launch.device):
                flags = backend.flag_ring(config.STEP_WINDOW + 1)
            self._window = Window(flags, config.STEP_WINDOW)
        return self._window

    def _step_rows(self, positions, launch: Launch, window, slot: int, cache: dict,
                   base: list | None = None):
        """The scalar rows of ``launch``: each tensor's known step (``base``: as the scalar
        phase found them), and the steps in doubt. With nothing in doubt (every CPU step)
        that is the one row of scalars."""
        pending = self._window if self._window is not None and self._window.entries else None
        if base is None or self._window is not None:  # flags read since may move the steps
            base = self._base_steps(positions, launch)
        if pending is None and window is None and base.count(base[0]) == len(base):
            return self._cached_row(cache, launch, base[0])

        def scalars_of(t):
            return self._cached_row(cache, launch, t)

        members = range(len(positions)) if launch.members is None else launch.members
        if pending is None:
            mask = [0] * len(base)
        elif self.per_param_steps:
            mask = [pending.mask(positions[local]) for local in members]
        else:
            mask = [(1 << len(pending.entries)) - 1] * len(base)
        return step_rows(scalars_of, base, mask, pending or window, slot)

    def _cached_row(self, cache: dict, launch: Launch, t: int, checked: bool = False,
                    grad_scale: float | None = None) -> tuple:
        """The scalar row of ``launch`` at 1-based step ``t``, from the step's ``cache`` (by
        hyper group, decays and step), computed there the first time (and, ``checked``,
        checked then: validate.check_scalars, a float ``grad_scale`` included)."""
        key = (launch.hyper, launch.decays, t)
        row = cache.get(key)
        if row is None:
            row = cache[key] = self._scalars(*key)
            if checked:
                _validate.check_scalars(self.spec.name, row, launch.group.dtype, grad_scale)
        return row

    def _base_steps(self, positions, launch: Launch) -> list[int]:
        """The 1-based step of each tensor of ``launch``, as far as known."""
        if not self.per_param_steps:
            members = positions if launch.members is None else launch.members
            return [self._iterations + 1] * len(members)
        counts = self._steps
        if launch.members is None:
            return [counts[pos] + 1 for pos in positions]
        return [counts[positions[local]] + 1 for local in launch.members]

    def _hyper_at(self, hyper: int, t: int) -> dict:
        """Group ``hyper``'s hyperparameters at 1-based step ``t``, with its running scalars,
        if any. Schedules (callables of the step count) are evaluated here, the one place
        they are."""
        group = self.hypers[hyper]
        hp = group.hyper
        if any(map(callable, hp.values())):
            hp = {k: float(v(t - 1)) if callable(v) else v for k, v in hp.items()}
        return hp if group.running is None else {**hp, **group.running}

    def _scalars(self, hyper: int, decays: bool, t: int) -> tuple:
        """The scalar row of 1-based step ``t`` of hyperparameter group ``hyper``."""
        hp = self._hyper_at(hyper, t)
        if not decays:
            hp = dict(hp, weight_decay=None)
        return scalar_row(self.spec, hp, t, self.convention)

    def _advance_running(self, positions) -> None:
        """After an applied step: each stepped group's running scalars, advanced once."""
        steps: dict = {}
        for pos in positions:
            steps.setdefault(self.group_of[pos], (self._steps[pos] if self.per_param_steps
                                                  else self._iterations) + 1)
        for index, t in steps.items():
            group = self.hypers[index]
            group.running = self.spec.advance(self._hyper_at(index, t), t, group.running)

    def _plan(self, positions: tuple, grads: list):
        """Every check for a first step of these positions (or an unusual grad)."""
        if len(set(positions)) != len(positions):
            raise ValueError("a param appears twice in one step")
        params = [self.params[pos] for pos in positions]
        for pos, p, g in zip(positions, params, grads):
            _validate.check_pair(pos, p, g, self.spec, mode=self.storages[pos].mode)
        grads = [_validate.contiguous(g, p) for g, p in zip(grads, params)]
        _validate.check_no_aliasing(positions, params, grads)
        backend = _validate.resolve_backend(self.backend, params, grads, positions)
        refusal = getattr(backend, "refusal", None)  # a storage the backend has no kernel for
        for st in dict.fromkeys(self.storages[pos] for pos in positions) if refusal else ():
            why = refusal(self.spec, st)
            if why:
                raise ValueError(why)
        grad_dtypes = tuple(kind_of(g).dtype(g) for g in grads)
        plan = self._plans[positions] = _Plan(backend, positions, grad_dtypes,
                                              tuple(g.dtype for g in grads))
        return plan, grads


class _Plan:
    """What a step over one set of positions reuses: the backend, the positions whose
    params let a grad skip the full checks, and the grads' dtypes they were checked with."""

    __slots__ = ("backend", "positions", "grad_dtypes", "_library_dtypes")

    def __init__(self, backend, positions: tuple, grad_dtypes: tuple, library_dtypes: tuple):
        self.backend, self.positions, self.grad_dtypes = backend, positions, grad_dtypes
        self._library_dtypes = library_dtypes  # the grads' own dtype objects: cheap to compare

    def takes(self, grads, params, held) -> bool:
        """True when every grad has its param's layout and the dtype checked before
        (fusedopt.engine.validate.same_layout) and neither is nor views a param this engine holds
        (``held``: id -> position)."""
        same = _validate.same_layout
        for g, pos, d in zip(grads, self.positions, self._library_dtypes):
            if id(g) in held or id(getattr(g, "base", None)) in held \
                    or not same(g, params[pos], d):
                return False
        return True


class _Outcome:
    """Whether a step decided on the device was applied; its truth value waits for it."""

    __slots__ = ("_engine", "_doubt")

    def __init__(self, engine, doubt):
        self._engine, self._doubt = engine, doubt

    def __bool__(self) -> bool:
        if self._doubt.applied is None:
            self._engine._settle(wait=True)
        return bool(self._doubt.applied)

    def __repr__(self) -> str:
        state = "in doubt" if self._doubt.applied is None else str(self._doubt.applied)
        return f"<step outcome: {state}>"


def scalar_row(spec, hp, t: int, convention: str) -> tuple:
    """``spec``'s scalars of 1-based step ``t`` in float64, in ``spec.scalar_names`` order: a
    row of the launch, which the backends read by those names (declare() checked them)."""
    values = spec.scalar_fn(hp, t, convention)
    return tuple([float(values[name]) for name in spec.scalar_names])


def _on_host(value) -> bool:
    """A number, or an array in host memory (reading it costs no wait)."""
    if isinstance(value, (numbers.Number, np.ndarray, np.generic)):
        return True
    return not (hasattr(value, "__cuda_array_interface__") or type(value).__module__
                .split(".")[0] == "cupy" or (kind_of(value).is_array(value)
                                             and kind_of(value).on_device(value)))


def _as_grad_scale(grad_scale):
    """``grad_scale`` as a float (a host 0-d array is read), after checking it; a device
    0-d array is kept as is (reading it would wait for the device; it is not checked)."""
    value = grad_scale
    if not _on_host(value) and getattr(value, "shape", None) in ((), (1,)):
        return value
    if not isinstance(value, (numbers.Real, str)) and getattr(value, "shape", None) == ():
        value = float(value)
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)
    if not ok:
        raise ValueError(f"grad_scale must be a positive finite number (the loss scale the "
                         f"grads carry), got {grad_scale!r}")
    return float(value)
