"""The engine: the one step loop behind every front door.

    validate -> group by dtype and device -> launch table -> scalars -> grad pre-pass -> launch

Front doors (``fusedopt.Adam`` & co, ``fusedopt.functional``, ``fusedopt.FlatParams``,
``fusedopt.torch``, ``fusedopt.keras``) translate names, defaults, state layout and conventions
into an :class:`Engine` and call :meth:`Engine.step`; none of them launches anything.

An engine holds, for one optimizer of the registry in one convention:

- hyperparameter groups (torch's param groups; a Keras optimizer has one), each with its
  validated hyperparameters, its variant flags and its state slots;
- params by position, with their state arrays (made beside each param, in its library, by
  its array kind: fusedopt/_arrays.py), their group and whether weight decay applies;
- the step count: one for all params (Keras' ``iterations``), or one per param
  (``per_param_steps=True``: torch's ``state["step"]``, where a param first stepped later
  starts its own bias correction at 1);
- the launch groups of each set of positions stepped together: params of one hyperparameter
  group, device, dtype, weight decay on/off and step count, each one backend group
  (fusedopt/_group.py) with its launch table, kept while the positions stay the same.

A step: the grads are checked (fully on the first step of a set of positions, then by a
cheap layout test), the scalars of each launch group are computed once on the host in double
(the registry's ``scalars``), the grad pre-pass runs when clipping by norm or unscaling a
loss-scaled step needs it (one read of the grads only, never the params), then each launch
group is one kernel launch (CUDA) or one Numba call (CPU).

Loss scaling: ``step(grads, grad_scale=s)`` divides every grad by ``s`` inside the pass (the
division is folded into each tensor's grad-scale entry of the launch table, with clipping's,
so no rule knows about it). The pre-pass sums each grad's squares; a non-finite sum means an
inf or NaN somewhere in the call, and then nothing changes: no param, no state, no count.
``found_inf`` says so. Clipping's norms are of the unscaled grads.

``use_ema`` (an ``ema``, fusedopt/_ema.py): after each applied step, every param's moving
average is updated as Keras does, a pass of array expressions after the fused update.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import _validate
from ._arrays import kind_of
from ._clip import NONE, Clipping, GradClip, grad_scales
from ._ema import MovingAverage
from ._registry import OptimizerSpec


@dataclass
class HyperGroup:
    """One set of hyperparameters (Keras names) and what they select."""

    hyper: dict
    flags: tuple
    slots: tuple


@dataclass
class Launch:
    """Params of one launch: ``members`` index the step's positions (None: all, in order)."""

    members: list | None
    group: Any          # the backend's Group: addresses and launch table
    hyper: int          # hyperparameter group
    decays: bool        # weight decay applies
    device: Any         # the device of its arrays (None on the host)
    step: int           # 1-based step its scalars are for, relative: see Engine._launches
    kind: Any = field(repr=False, default=None)


class Engine:
    """Every step of one registered optimizer, for every front door."""

    def __init__(self, spec: OptimizerSpec, convention: str = "keras", *, backend: str = "auto",
                 clipping: Clipping = NONE, per_param_steps: bool = False,
                 ema: MovingAverage | None = None):
        self.spec, self.convention, self.backend = spec, convention, backend
        self.clipping = clipping
        self.ema = ema                    # use_ema: a moving average of every param
        self.averages: list = []          # position -> its moving average (with ema)
        self.per_param_steps = per_param_steps
        self.hypers: list[HyperGroup] = []
        self.params: list = []            # position -> param
        self.states: list[list] = []      # position -> its slot arrays, in kernel order
        self.group_of: list[int] = []     # position -> hyperparameter group
        self.decays: list[bool] = []      # position -> weight decay applies
        self.steps: list[int] = []        # position -> steps applied (per_param_steps)
        self.iterations = 0               # steps applied; a skipped step does not count
        self.found_inf = False            # the last step was skipped: a grad was not finite
        self._index: dict[int, int] = {}  # id(param) -> position
        self._launch_cache: dict = {}
        self._plans: dict = {}

    # --- hyperparameter groups --------------------------------------------------------------
    def validate_hyper(self, hyper: Mapping[str, Any], where: str = "") -> HyperGroup:
        """``hyper`` completed with the defaults and checked; raises naming ``where``."""
        known = {h.name for h in self.spec.hypers}
        unknown = set(hyper) - known
        if unknown:
            raise TypeError(f"{where}{self.spec.name} got unexpected arguments "
                            f"{sorted(unknown)}; it takes {sorted(known)}")
        full = self.spec.defaults()
        full.update(hyper)
        try:
            for h in self.spec.hypers:
                h.validate(full[h.name], self.convention)
            self.spec.check(full, self.convention)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
        flags = tuple(self.spec.flags(full, self.convention))
        return HyperGroup(full, flags, tuple(self.spec.slots(flags)))

    def add_group(self, hyper: Mapping[str, Any], where: str | None = None) -> int:
        """A new hyperparameter group; returns its index. Errors start with ``where``
        (default "group N: ")."""
        where = f"group {len(self.hypers)}: " if where is None else where
        self.hypers.append(self.validate_hyper(hyper, where))
        return len(self.hypers) - 1

    def set_hyper(self, index: int, hyper: Mapping[str, Any]) -> None:
        """Change group ``index``'s hyperparameters (a scheduler's new learning rate, say).

        The state slots must stay the ones its params hold (amsgrad, momentum on/off)."""
        new = self.validate_hyper(hyper, f"group {index}: ")
        old = self.hypers[index]
        if new.slots != old.slots and index in self.group_of:
            raise ValueError(f"group {index}: the change would need state slots {new.slots}, "
                             f"but its params hold {old.slots}; set amsgrad/momentum/centered "
                             "before the first step, or make a new optimizer")
        self.hypers[index] = new

    # --- params and state -------------------------------------------------------------------
    def add_params(self, params, group: int = 0, decays=None, states=None) -> list[int]:
        """Append ``params`` to hyperparameter group ``group``; returns their positions.

        State is made beside each param (``slot_init`` of the registry, the param's dtype),
        unless ``states`` gives it (a list of slot arrays per param, checked and used as is).
        Every param is checked before any is added.
        """
        params = list(params)
        decays = [True] * len(params) if decays is None else list(decays)
        first = len(self.params)
        slots = self.hypers[group].slots
        seen = set(self._index)
        for i, p in enumerate(params):
            _validate.check_pair(first + i, p, p, self.spec)
            if id(p) in seen:
                raise ValueError(f"param {first + i} is already held by this optimizer (at "
                                 f"position {self._index.get(id(p), first + i)}); pass each "
                                 "param once")
            seen.add(id(p))
            if states is not None:
                _validate.check_state(first + i, p, states[i], slots)
        if params:
            _validate.resolve_backend(self.backend, params, params,
                                      list(range(first, first + len(params))))
        init = self.spec.slot_init(self.hypers[group].hyper)
        for i, p in enumerate(params):
            kind = kind_of(p)
            made = (list(states[i]) if states is not None
                    else [kind.zeros(p, kind.dtype(p), init) for _ in slots])
            self._index[id(p)] = first + i
            self.params.append(p)
            self.states.append(made)
            self.group_of.append(group)
            self.decays.append(bool(decays[i]))
            self.steps.append(0)
            if self.ema is not None:
                self.averages.append(self.ema.zeros(p))
        return list(range(first, first + len(params)))

    def position(self, param) -> int | None:
        """The position of ``param`` (by identity), None if this engine does not hold it."""
        return self._index.get(id(param))

    def slot_names(self, position: int) -> tuple:
        return self.hypers[self.group_of[position]].slots

    def state(self, position: int) -> dict:
        """The state arrays of ``position`` by slot name (the arrays themselves)."""
        return dict(zip(self.slot_names(position), self.states[position]))

    # --- the step ---------------------------------------------------------------------------
    def step(self, grads, positions=None, *, grad_scale=None, found_inf=None) -> bool:
        """One step of the params at ``positions`` (default: all, in order) with ``grads``.

        Every pair is checked before any param changes. ``grad_scale``: the grads are those
        of a loss multiplied by it; they are divided by it inside the pass, and a step with
        an inf or NaN grad changes nothing (returns False, sets ``found_inf``).
        ``found_inf``: the caller already checked the grads (torch's GradScaler does); a
        non-zero value skips the step the same way. Both may be numbers or 0-d arrays.
        Returns True when the step was applied.
        """
        positions = tuple(range(len(self.params))) if positions is None else tuple(positions)
        grads = list(grads)
        if len(grads) != len(positions):
            raise ValueError(f"got {len(grads)} grads for {len(positions)} params")
        if not positions:
            raise ValueError("a step needs at least one (grad, param) pair")
        if grad_scale is not None:
            grad_scale = _as_grad_scale(grad_scale)
        if found_inf is not None and float(found_inf) != 0.0:
            # Checked before the grads, as torch's fused optimizers do: nothing is launched.
            self.found_inf = True
            return False
        plan = self._plans.get(positions)
        if plan is None or not plan.takes(grads, self.params):
            plan, grads = self._plan(positions, grads)
        launches = self._launches(plan.backend, positions)
        work = []
        for launch in launches:
            g = grads if launch.members is None else [grads[i] for i in launch.members]
            work.append((launch, g))
        if self.clipping.by_norm or grad_scale is not None:
            sums = [plan.backend.sum_squares(launch.group, g) for launch, g in work]
            if grad_scale is not None and found_inf is None and not _all_finite(sums):
                self.found_inf = True
                return False
            scales = grad_scales(self.clipping, sums, grad_scale)
        else:
            scales = [None] * len(work)
        limit = self.clipping.limit
        scalars: dict = {}
        for (launch, g), scale in zip(work, scales):
            t = self._step_of(positions, launch)
            key = (launch.hyper, launch.decays, t)
            if key not in scalars:
                scalars[key] = self._scalars(launch.hyper, launch.decays, t)
            with launch.kind.launch_context(launch.device):
                plan.backend.step(self.spec, self.hypers[launch.hyper].flags, scalars[key],
                                  launch.group, g, clip=GradClip(scale, limit))
        if self.ema is not None:  # every param's average, as Keras: a pass after the update
            self.ema.update(self.params, self.averages, self.iterations)
        self.found_inf = False
        self.iterations += 1
        if self.per_param_steps:
            for pos in positions:
                self.steps[pos] += 1
        return True

    def _step_of(self, positions, launch: Launch) -> int:
        """The 1-based step ``launch``'s scalars are for."""
        if not self.per_param_steps:
            return self.iterations + 1
        first = positions[0] if launch.members is None else positions[launch.members[0]]
        return self.steps[first] + 1

    def _scalars(self, hyper: int, decays: bool, t: int) -> tuple:
        hp = self.hypers[hyper].hyper
        if any(callable(v) for v in hp.values()):  # schedules: callables of the step count
            hp = {k: float(v(t - 1)) if callable(v) else v for k, v in hp.items()}
        if not decays:
            hp = dict(hp, weight_decay=None)
        return self.spec.scalars(hp, t, self.convention)

    def _plan(self, positions: tuple, grads: list):
        """Every check for a first step of these positions (or an unusual grad)."""
        if len(set(positions)) != len(positions):
            raise ValueError("a param appears twice in one step")
        params = [self.params[pos] for pos in positions]
        for pos, p, g in zip(positions, params, grads):
            _validate.check_pair(pos, p, g, self.spec)
        grads = [_validate.contiguous(g) for g in grads]
        backend = _validate.resolve_backend(self.backend, params, grads, positions)
        plan = self._plans[positions] = _Plan(backend, positions)
        return plan, grads

    def launch_groups(self, positions=None, backend=None) -> list[Launch]:
        """The launch groups of a step over ``positions`` (built on first use)."""
        positions = tuple(range(len(self.params))) if positions is None else tuple(positions)
        if backend is None:
            params = [self.params[pos] for pos in positions]
            backend = _validate.resolve_backend(self.backend, params, params, positions)
        return self._launches(backend, positions)

    def _launches(self, backend, positions: tuple) -> list[Launch]:
        """One launch per (hyperparameter group, device, dtype, weight decay, step count)."""
        steps = (tuple(self.steps[pos] - self.steps[positions[0]] for pos in positions)
                 if self.per_param_steps else ())
        key = (backend.name, positions, steps)
        launches = self._launch_cache.get(key)
        if launches is not None:
            return launches
        by_kind: dict[tuple, list[int]] = {}
        for local, pos in enumerate(positions):
            p = self.params[pos]
            kind = kind_of(p)
            group = self.group_of[pos]
            decay = bool(self.hypers[group].hyper.get("weight_decay"))
            relative = steps[local] if steps else 0
            by_kind.setdefault((group, kind.device(p), kind.dtype(p),
                                not decay or self.decays[pos], relative), []).append(local)
        launches = []
        for (group, device, dtype, decays, relative), members in by_kind.items():
            with kind_of(self.params[positions[members[0]]]).launch_context(device):
                backend_group = backend.group(dtype, [self.params[positions[i]] for i in members],
                                              [self.states[positions[i]] for i in members])
            whole = members == list(range(len(positions)))
            launches.append(Launch(None if whole else members, backend_group, group, decays,
                                   device, relative,
                                   kind_of(self.params[positions[members[0]]])))
        self._launch_cache[key] = launches
        return launches


class _Plan:
    """What a step over one set of positions reuses: the backend, and the positions whose
    params let a grad skip the full checks."""

    __slots__ = ("backend", "positions")

    def __init__(self, backend, positions: tuple):
        self.backend, self.positions = backend, positions

    def takes(self, grads, params) -> bool:
        """True when every grad has its param's layout (fusedopt._validate.same_layout)."""
        same = _validate.same_layout
        return all(same(g, params[pos]) for g, pos in zip(grads, self.positions))


def _as_grad_scale(grad_scale) -> float:
    """``grad_scale`` as a float (a 0-d array or tensor is read), after checking it."""
    value = grad_scale
    if not isinstance(value, (numbers.Real, str)) and getattr(value, "shape", None) == ():
        value = float(value)
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)
    if not ok:
        raise ValueError(f"grad_scale must be a positive finite number (the loss scale the "
                         f"grads carry), got {grad_scale!r}")
    return float(value)


def _all_finite(sums) -> bool:
    """Whether every per-tensor sum of squares is finite (no inf or NaN in any grad)."""
    for s in sums:
        xp = np if isinstance(s, np.ndarray) else _module_of(s)
        if s.size and not bool(xp.isfinite(s).all()):
            return False
    return True


def _module_of(array):
    import cupy
    return cupy
