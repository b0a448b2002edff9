"""The engine: the one step loop behind every front door.

    validate -> group by dtype and device -> launch table -> scalars -> grad pre-pass -> launch

Front doors (``fusedopt.Adam`` & co, ``fusedopt.functional``, ``fusedopt.FlatParams``,
``fusedopt.torch``, ``fusedopt.keras``) translate names, defaults, state layout and conventions
into an :class:`Engine` and call :meth:`Engine.step`; none of them launches anything.

An engine holds, for one optimizer of the registry in one convention:

- hyperparameter groups (torch's param groups; a Keras optimizer has one), each with its
  validated hyperparameters, its variant flags and its state slots;
- params by position, with their state arrays (made beside each param, in its library, by
  its array kind: fusedopt/memory/arrays.py), their group and whether weight decay applies;
- the step count: one for all params (Keras' ``iterations``), or one per param
  (``per_param_steps=True``: torch's ``state["step"]``, where a param first stepped later
  starts its own bias correction at 1);
- the launch groups of each set of positions stepped together: params of one hyperparameter
  group, device, dtype, weight decay on/off and step count, each one backend group
  (fusedopt/memory/group.py) with its launch table, kept while the positions stay the same.

A step: the grads are checked (fully on the first step of a set of positions, then by a
cheap layout test), the scalars of each launch group are computed once on the host in double
(the registry's ``scalars``), the grad pre-pass runs when clipping by norm or unscaling a
loss-scaled step needs it (one read of the grads only, never the params), then each launch
group is one kernel launch (CUDA) or one Numba call (CPU).

Storage (fusedopt/memory/storage.py): params of float32, float64, float16 or bfloat16; state in
``state_dtype`` (default float32 for 16-bit params, the param's dtype otherwise; a
hyperparameter group may choose its own, as torch's param groups do); with
``master_weights`` an fp32 master (or, for bfloat16, an int16 remainder) in a last slot,
"master" (or "remainder"); with ``kahan_summation`` a compensation in the param's dtype,
"compensation"; with ``stochastic_rounding`` no slot, but every 16-bit store rounds
stochastically with bits keyed on (``seed``, the tensor's 1-based step, its position,
the element's index, the array): each launch group's table carries a stream per tensor,
(seed << 32) | position, and the step reaches the kernels with the scalars. Launch
groups are per storage, grads' dtype included.

Loss scaling: ``step(grads, grad_scale=s)`` divides every grad by ``s`` inside the pass (the
division is folded into each tensor's grad-scale entry of the launch table, with clipping's,
so no rule knows about it). The grad-only pre-pass (the one clipping by norm uses) also
tests every element for inf and NaN - a test of its own, since a sum of squares overflows
for finite float64 grads above ~1e154 - and a step with one changes nothing: no param, no
state, no count. ``found_inf`` says so. Clipping's norms are of the unscaled grads.

On the CPU that is decided before the launch. On CUDA nothing waits for the host: the
pre-pass writes a flag on the device (``grad_scale`` and ``found_inf`` may be device 0-d
arrays, as torch's GradScaler hands them over), the optimizer kernels of the step read it
and return without writing when it is set, and the host reads it back later from a copy
it started without waiting (fusedopt/memory/steps.py). Until then the step count is in doubt,
so later launches carry the registry's scalars for every candidate step and the kernels
pick theirs from the flags (kernels/steps.cuh). ``iterations``, ``found_inf``, ``steps``
and a step's returned outcome are exact: reading one while steps are in doubt waits for
their flags (the only waits there are, besides more than ``config.STEP_WINDOW`` steps in
doubt at once, or a loss-scaled step over params on several devices).

Maximizing: a group added with ``maximize=True`` (torch's flag, any optimizer) ascends its
objective. Its grads enter the rules negated: a -1 folded into the same per-tensor grad
scale, exact, with no extra pass and no rule that knows about it.

``use_ema`` (an ``ema``, fusedopt/engine/ema.py): after each applied step, every param's moving
average is updated as Keras does. On a backend that says ``FUSED_AVERAGE`` (the CPU's) the
average is one more slot of the group, updated in the step's own pass from the param in
registers; elsewhere (CUDA, unfused), and for params the step did not include, it is a
pass of array expressions after the update. A loss-scaled CUDA step decided on the device
waits for its flag first when there is an average to update (the only case where such a
step waits).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .. import config
from ..algorithms.registry import OptimizerSpec, lookup
from ..memory import storage as _storage
from ..memory import table as _table
from ..memory.arrays import kind_of
from ..memory.steps import Window, step_rows
from . import threads as _threads
from . import validate as _validate
from .clip import NONE, Clipping, GradClip, grad_scales
from .ema import MovingAverage


@dataclass
class HyperGroup:
    """One set of hyperparameters (Keras names) and what they select."""

    hyper: dict
    flags: tuple
    slots: tuple
    maximize: bool = False  # grads enter the rules negated (a -1 in their grad scale)
    state_dtype: Any = None  # the storage policy of its params (fusedopt/memory/storage.py)
    mode: str = "plain"


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


#: "the engine's own policy", for a group's storage arguments.
_ENGINE = object()


class Engine:
    """Every step of one registered optimizer, for every front door."""

    def __init__(self, spec: OptimizerSpec, convention: str = "keras", *, backend: str = "auto",
                 clipping: Clipping = NONE, per_param_steps: bool = False,
                 state_dtype=None, master_weights=False, ema: MovingAverage | None = None,
                 stochastic_rounding=False, kahan_summation=False, seed=0):
        self.spec, self.convention, self.backend = spec, convention, backend
        self.clipping = clipping
        self.ema = ema                    # use_ema: a moving average of every param
        self.averages: list = []          # position -> its moving average (with ema)
        self.per_param_steps = per_param_steps
        _storage.check_state_dtype(state_dtype)
        self.state_dtype = state_dtype
        self.master_weights = master_weights
        self.mode = _storage.mode_of(master_weights, stochastic_rounding, kahan_summation)
        self._seed = check_seed(seed)
        self.hypers: list[HyperGroup] = []
        self.params: list = []            # position -> param
        self.states: list[list] = []      # position -> its slot arrays (master slot last)
        self.storages: list = []          # position -> its Storage (grads: the param's dtype)
        self.group_of: list[int] = []     # position -> hyperparameter group
        self.decays: list[bool] = []      # position -> weight decay applies
        self._steps: list[int] = []       # position -> steps applied, as far as known
        self._iterations = 0              # steps applied, as far as known
        self._outcome = True              # the last step: applied, or its Doubt
        self._window: Window | None = None  # loss-scaled CUDA steps in doubt
        self._index: dict[int, int] = {}  # id(param) -> position
        self._launch_cache: dict = {}
        self._plans: dict = {}

    # --- hyperparameter groups --------------------------------------------------------------
    def validate_hyper(self, hyper: Mapping[str, Any], where: str = "") -> HyperGroup:
        """``hyper`` completed with the defaults and checked; raises naming ``where``.

        Besides the registry's hyperparameters, every optimizer takes ``maximize`` (False)."""
        hyper = dict(hyper)
        maximize = hyper.pop("maximize", False)
        if not isinstance(maximize, bool):
            raise ValueError(f"{where}maximize must be True or False, got {maximize!r}")
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
        return HyperGroup(full, flags, tuple(self.spec.slots(flags)), maximize)

    def _with_storage(self, group: HyperGroup, state_dtype, master_weights,
                      where: str, mode: str | None = None, stochastic_rounding=False,
                      kahan_summation=False) -> HyperGroup:
        """``group`` with its storage policy: the engine's (or ``mode``, a group's own kept
        through a change), unless given (torch's param groups may each choose theirs:
        ``master_weights`` with ``stochastic_rounding`` and ``kahan_summation``)."""
        if state_dtype is _ENGINE:
            state_dtype = self.state_dtype
        try:
            _storage.check_state_dtype(state_dtype)
            if master_weights is _ENGINE:
                group.mode = self.mode if mode is None else mode
            else:
                group.mode = _storage.mode_of(master_weights, stochastic_rounding,
                                              kahan_summation)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
        group.state_dtype = state_dtype
        return group

    def add_group(self, hyper: Mapping[str, Any], where: str | None = None, *,
                  state_dtype=_ENGINE, master_weights=_ENGINE, stochastic_rounding=False,
                  kahan_summation=False) -> int:
        """A new hyperparameter group; returns its index. Its params are kept with
        ``state_dtype`` and ``master_weights`` (default: the engine's, its rounding mode
        included), or, where ``master_weights`` is given, that with ``stochastic_rounding``
        and ``kahan_summation``. Errors start with ``where`` (default "group N: ")."""
        where = f"group {len(self.hypers)}: " if where is None else where
        self.hypers.append(self._with_storage(self.validate_hyper(hyper, where), state_dtype,
                                              master_weights, where,
                                              stochastic_rounding=stochastic_rounding,
                                              kahan_summation=kahan_summation))
        return len(self.hypers) - 1

    def set_hyper(self, index: int, hyper: Mapping[str, Any], where: str | None = None, *,
                  state_dtype=_ENGINE, master_weights=_ENGINE, stochastic_rounding=False,
                  kahan_summation=False) -> None:
        """Change group ``index``'s hyperparameters (a scheduler's new learning rate, say).

        The state slots and the storage policy must stay the ones its params hold
        (amsgrad, momentum on/off, state_dtype, master_weights). Errors start with
        ``where`` (default "group N: ")."""
        where = f"group {index}: " if where is None else where
        old = self.hypers[index]
        state_dtype = old.state_dtype if state_dtype is _ENGINE else state_dtype
        new = self._with_storage(self.validate_hyper(hyper, where), state_dtype,
                                 master_weights, where, mode=old.mode,
                                 stochastic_rounding=stochastic_rounding,
                                 kahan_summation=kahan_summation)
        if index in self.group_of:
            if new.slots != old.slots:
                raise ValueError(f"{where}the change would need state slots {new.slots}, "
                                 f"but its params hold {old.slots}; set amsgrad/momentum/"
                                 "centered before the first step, or make a new optimizer")
            if (new.state_dtype, new.mode) != (old.state_dtype, old.mode):
                raise ValueError(f"{where}its params already hold state kept with "
                                 f"state_dtype={old.state_dtype!r}, "
                                 f"{_storage.describe(old.mode)}; set those before the "
                                 "first step, or make a new optimizer")
        self.hypers[index] = new

    # --- params and state -------------------------------------------------------------------
    def storage_of(self, position: int, param, group: int | None = None) -> "_storage.Storage":
        """The storage ``param`` gets at ``position`` in hyperparameter group ``group``
        (default: the position's group, else the engine's policy); raises naming it and
        the fix."""
        if group is None and position < len(self.group_of):
            group = self.group_of[position]
        if group is None or group >= len(self.hypers):
            policy = (self.state_dtype, self.mode)
        else:
            policy = (self.hypers[group].state_dtype, self.hypers[group].mode)
        dtype = kind_of(param).dtype(param)
        state, mode = _storage.resolve(f"param {position}", dtype, *policy)
        return _storage.Storage(dtype, dtype, state, mode)

    def add_params(self, params, group: int = 0, decays=None, states=None,
                   averages=None) -> list[int]:
        """Append ``params`` to hyperparameter group ``group``; returns their positions.

        State is made beside each param (``slot_init`` of the registry, in the state dtype;
        a master slot initialised from the param), unless ``states`` gives it (a list of
        slot arrays per param, master slot last, checked and used as is); likewise each
        param's moving average with ``ema``, unless ``averages`` gives them. Every param is
        checked before any is added.
        """
        params = list(params)
        decays = [True] * len(params) if decays is None else list(decays)
        first = len(self.params)
        slots = self.hypers[group].slots
        seen = set(self._index)
        storages = []
        for i, p in enumerate(params):
            _validate.check_pair(first + i, p, p, self.spec)
            storages.append(self.storage_of(first + i, p, group))
            if id(p) in seen:
                raise ValueError(f"param {first + i} is already held by this optimizer (at "
                                 f"position {self._index.get(id(p), first + i)}); pass each "
                                 "param once")
            seen.add(id(p))
            if states is not None:
                _validate.check_state(first + i, p, states[i], *_slot_dtypes(slots,
                                                                             storages[-1]))
            if averages is not None:
                _validate.check_state(first + i, p, [averages[i]], ["average"])
        if averages is not None and self.ema is None:
            raise ValueError("averages were given to an engine without use_ema")
        if params:
            _validate.check_distinct_memory(self.params + params)
            _validate.resolve_backend(self.backend, params, params,
                                      list(range(first, first + len(params))))
        init = self.spec.slot_init(self.hypers[group].hyper)
        made_all = []
        for i, p in enumerate(params):
            made = (list(states[i]) if states is not None
                    else _new_state(p, slots, storages[i], init))
            if not all(_validate.same_order(s, p) for s in made):
                raise ValueError(f"param {first + i} is Fortran-ordered and its array library "
                                 "makes state arrays in C order; pass a C-contiguous param")
            made_all.append(made)
        for i, (p, made) in enumerate(zip(params, made_all)):
            self._index[id(p)] = first + i
            self.params.append(p)
            self.states.append(made)
            self.storages.append(storages[i])
            self.group_of.append(group)
            self.decays.append(bool(decays[i]))
            self._steps.append(0)
            if self.ema is not None:
                self.averages.append(self.ema.zeros(p) if averages is None else averages[i])
        return list(range(first, first + len(params)))

    @property
    def seed(self) -> int:
        """The seed of stochastic rounding's bits (with the step, the param position, the
        element index and the array, their key)."""
        return self._seed

    @seed.setter
    def seed(self, value) -> None:
        value = check_seed(value)
        if value != self._seed:
            self._seed = value
            self._launch_cache.clear()  # the tables carry the seed in their stream rows

    def forget_params(self) -> None:
        """Drop every param and its state: undoes a build that a later check refused."""
        self.params, self.states, self.storages = [], [], []
        self.group_of, self.decays, self._steps, self.averages = [], [], [], []
        self._index.clear()
        self._launch_cache.clear()
        self._plans.clear()

    def position(self, param) -> int | None:
        """The position of ``param`` (by identity), None if this engine does not hold it."""
        return self._index.get(id(param))

    def slot_names(self, position: int) -> tuple:
        """The names of ``position``'s state arrays: the optimizer's slots, then "master" or
        "remainder" when the param has one."""
        master = self.storages[position].master
        return self.hypers[self.group_of[position]].slots + ((master[0],) if master else ())

    def state(self, position: int) -> dict:
        """The state arrays of ``position`` by slot name (the arrays themselves)."""
        return dict(zip(self.slot_names(position), self.states[position]))

    # --- step counts, as far as the device has told --------------------------------------
    @property
    def iterations(self) -> int:
        """Steps applied; a skipped step does not count. Waits for steps in doubt."""
        self._settle(wait=True)
        return self._iterations

    @iterations.setter
    def iterations(self, value: int) -> None:
        self._settle(wait=True)
        self._iterations = int(value)

    @property
    def steps(self) -> list[int]:
        """Steps applied per position (``per_param_steps``). Waits for steps in doubt."""
        self._settle(wait=True)
        return self._steps

    @property
    def found_inf(self) -> bool:
        """The last step was skipped: a grad was inf or NaN (or the caller said so). Waits
        for that step's flag if it is in doubt."""
        outcome = self._outcome
        if not isinstance(outcome, bool):
            self._settle(wait=True)
            outcome = outcome.applied
        return not outcome

    def pending(self) -> int:
        """Loss-scaled steps whose flag the host has not read yet (0 on the CPU)."""
        return len(self._window.entries) if self._window is not None else 0

    def last_flag(self):
        """The device flag of the last step (a 1-element int32 device array, nonzero when
        it was skipped) while it is in doubt, else None: a loss scaler reads it without
        waiting."""
        outcome = self._outcome
        if isinstance(outcome, bool) or self._window is None:
            return None
        return self._window.flags[outcome.slot: outcome.slot + 1]

    def _settle(self, wait: bool = False, limit: int | None = None) -> None:
        """Fold the flags that have arrived (with ``wait``, waiting for them; at most
        ``limit``) into the counts."""
        if self._window is None:
            return
        for doubt in self._window.settle(wait, limit):
            if doubt.applied:
                self._iterations += 1
                for pos in doubt.positions:
                    self._steps[pos] += 1

    def _confirm(self, positions, applied: bool) -> None:
        self._outcome = applied
        if applied:
            self._iterations += 1
            for pos in positions:
                self._steps[pos] += 1

    def bind(self, params) -> None:
        """Hold ``params`` at the positions of the arrays held now, keeping every state array.

        For a copy (pickle, ``copy.deepcopy``), whose params are copies of the original's:
        ``bind`` points it at the arrays it should update. Each must have the shape, dtype,
        memory order and place (host or device) of the param it replaces; nothing is copied.
        Every param is checked before any is replaced.
        """
        params = list(params)
        if len(params) != len(self.params):
            raise ValueError(f"bind got {len(params)} params, this optimizer holds "
                             f"{len(self.params)}; pass them all, in the order it was built with")
        seen: dict[int, int] = {}
        for i, (new, old) in enumerate(zip(params, self.params)):
            _validate.check_pair(i, new, new, self.spec)
            _validate.check_replacement(i, new, old)
            if id(new) in seen:
                raise ValueError(f"param {i} is the same array as param {seen[id(new)]}; "
                                 "pass each param once")
            seen[id(new)] = i
        _validate.check_distinct_memory(params)
        self.params = params
        self._index = {id(p): i for i, p in enumerate(params)}
        self._launch_cache.clear()
        self._plans.clear()

    # --- copies: pickle and copy.deepcopy -------------------------------------------------------
    def __getstate__(self) -> dict:
        """Everything but what is rebuilt from it: the spec travels as its registry name (it
        holds functions); launch groups, plans (addresses of this process's arrays) and the
        identity index are dropped and rebuilt on the first step."""
        state = dict(self.__dict__)
        state.update(spec=self.spec.name, _index=None, _launch_cache={}, _plans={})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.spec = lookup(state["spec"])
        self._index = {id(p): i for i, p in enumerate(self.params)}

    # --- the step ---------------------------------------------------------------------------
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
        """
        positions = tuple(range(len(self.params))) if positions is None else tuple(positions)
        grads = list(grads)
        if len(grads) != len(positions):
            raise ValueError(f"got {len(grads)} grads for {len(positions)} params")
        if not positions:
            raise ValueError("a step needs at least one (grad, param) pair")
        if grad_scale is not None:
            grad_scale = _as_grad_scale(grad_scale)
        checked = found_inf is not None
        if checked and _on_host(found_inf):
            if float(found_inf) != 0.0:
                # Checked before the grads, as torch's fused optimizers do: nothing is launched.
                self._outcome = False
                return False
            found_inf = None
        plan = self._plans.get(positions)
        if plan is None or not plan.takes(grads, self.params, self._index):
            plan, grads = self._plan(positions, grads)
        launches = self._launches(plan.backend, positions, plan.grad_dtypes)
        work = []
        scalars: dict = {}
        for launch in launches:  # every launch's scalars computed and checked before any runs
            g = grads if launch.members is None else [grads[i] for i in launch.members]
            work.append((launch, g))
            for t in set(self._base_steps(positions, launch)):
                key = (launch.hyper, launch.decays, t)
                if key not in scalars:
                    scalars[key] = self._scalars(*key)
                    _validate.check_scalars(self.spec.name, scalars[key], launch.group.dtype,
                                            grad_scale if isinstance(grad_scale, float)
                                            else None)
        on_device = (getattr(plan.backend, "DEVICE_FLAGS", False)
                     and len({launch.device for launch in launches}) == 1)
        decide_on_device = on_device and (found_inf is not None or (
            grad_scale is not None and not checked))
        if on_device:
            self._settle()
        window = self._device_window(plan.backend, launches[0]) if decide_on_device else None
        if window is not None and window.full():
            self._settle(wait=True, limit=1)  # as many in doubt as the rows cover: wait
        slot = window.next_slot() if window is not None else -1
        scales = [None] * len(work)
        if self.clipping.by_norm or (grad_scale is not None and not checked):
            # On the arrays' device and stream (torch's current one for torch tensors).
            passes = []
            for launch, g in work:
                with launch.kind.launch_context(launch.device), _threads.guard(plan.backend):
                    passes.append(plan.backend.grad_pass(launch.group, g))
            if grad_scale is not None and not checked:
                if window is not None:
                    for k, ((launch, _), (_, bad)) in enumerate(zip(work, passes)):
                        with launch.kind.launch_context(launch.device):
                            plan.backend.raise_flag(launch.group, window.flags, slot,
                                                    or_in=k > 0)
                elif any(_any(bad) for _, bad in passes):
                    self._outcome = False
                    return False
            scales = grad_scales(self.clipping, [s for s, _ in passes], grad_scale)
        elif grad_scale is not None:
            scales = [_full(launch.device is not None, len(g), grad_scale) for launch, g in work]
        if found_inf is not None:  # the caller's device flag becomes this step's flag
            plan.backend.copy_flag(found_inf, window.flags, slot)
        limit = self.clipping.limit
        averaged: list = []  # positions whose average the step's own pass updates
        for (launch, g), scale in zip(work, scales):
            rows = self._step_rows(positions, launch, window, slot, scalars)
            first = positions[0 if launch.members is None else launch.members[0]]
            t = (self._steps[first] if self.per_param_steps else self._iterations) + 1
            with launch.kind.launch_context(launch.device), _threads.guard(plan.backend):
                if self.hypers[launch.hyper].maximize:
                    scale = -1.0 if scale is None else -scale
                average = None
                if launch.group.averaged:
                    average = self.ema.scalars(self.params[first], self._iterations)
                    averaged.extend(positions if launch.members is None
                                    else (positions[i] for i in launch.members))
                plan.backend.step(self.spec, self.hypers[launch.hyper].flags, rows,
                                  launch.group, g, clip=GradClip(scale, limit), step=t,
                                  **({} if average is None else {"average": average}))
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

    def _step_rows(self, positions, launch: Launch, window, slot: int, cache: dict):
        """The scalar rows of ``launch``: each tensor's known step, and the steps in doubt.
        With nothing in doubt (every CPU step) that is the one row of scalars."""
        members = range(len(positions)) if launch.members is None else launch.members
        pending = self._window if self._window is not None and self._window.entries else None

        def scalars_of(t):
            key = (launch.hyper, launch.decays, t)
            if key not in cache:
                cache[key] = self._scalars(launch.hyper, launch.decays, t)
            return cache[key]

        base = self._base_steps(positions, launch)
        if pending is None and window is None and base.count(base[0]) == len(base):
            return scalars_of(base[0])
        if pending is None:
            mask = [0] * len(base)
        elif self.per_param_steps:
            mask = [pending.mask(positions[local]) for local in members]
        else:
            mask = [(1 << len(pending.entries)) - 1] * len(base)
        return step_rows(scalars_of, base, mask, pending or window, slot)

    def _base_steps(self, positions, launch: Launch) -> list[int]:
        """The 1-based step of each tensor of ``launch``, as far as known."""
        members = range(len(positions)) if launch.members is None else launch.members
        if self.per_param_steps:
            return [self._steps[positions[local]] + 1 for local in members]
        return [self._iterations + 1] * len(members)

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
            _validate.check_pair(pos, p, g, self.spec, mode=self.storages[pos].mode)
        grads = [_validate.contiguous(g, p) for g, p in zip(grads, params)]
        _validate.check_no_aliasing(positions, params, grads)
        backend = _validate.resolve_backend(self.backend, params, grads, positions)
        grad_dtypes = tuple(kind_of(g).dtype(g) for g in grads)
        plan = self._plans[positions] = _Plan(backend, positions, grad_dtypes,
                                              tuple(g.dtype for g in grads))
        return plan, grads

    def launch_groups(self, positions=None, backend=None) -> list[Launch]:
        """The launch groups of a step over ``positions`` (built on first use)."""
        positions = tuple(range(len(self.params))) if positions is None else tuple(positions)
        if backend is None:
            params = [self.params[pos] for pos in positions]
            backend = _validate.resolve_backend(self.backend, params, params, positions)
        return self._launches(backend, positions,
                              tuple(self.storages[pos].param for pos in positions))

    def _launches(self, backend, positions: tuple, grad_dtypes: tuple) -> list[Launch]:
        """One launch per (hyperparameter group, device, storage with the grads' dtype,
        weight decay, step count)."""
        steps = (tuple(self._steps[pos] - self._steps[positions[0]] for pos in positions)
                 if self.per_param_steps else ())
        key = (backend.name, positions, steps, grad_dtypes)
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
            st = self.storages[pos]
            st = _storage.Storage(st.param, grad_dtypes[local], st.state, st.mode)
            by_kind.setdefault((group, kind.device(p), st,
                                not decay or self.decays[pos], relative), []).append(local)
        launches = []
        fuse_average = self.ema is not None and getattr(backend, "FUSED_AVERAGE", False)
        for (group, device, st, decays, relative), members in by_kind.items():
            streams = _table.streams(self._seed, [positions[i] for i in members])
            averages = ({"averages": [self.averages[positions[i]] for i in members]}
                        if fuse_average else {})
            with kind_of(self.params[positions[members[0]]]).launch_context(device):
                backend_group = backend.group(st, [self.params[positions[i]] for i in members],
                                              [self.states[positions[i]] for i in members],
                                              streams=streams, **averages)
            whole = members == list(range(len(positions)))
            launches.append(Launch(None if whole else members, backend_group, group, decays,
                                   device, relative,
                                   kind_of(self.params[positions[members[0]]])))
        self._launch_cache[key] = launches
        return launches


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


def _slot_dtypes(slots: tuple, st) -> tuple:
    """(names, dtypes) of the state arrays a param of storage ``st`` holds."""
    names, dtypes = list(slots), [st.state] * len(slots)
    if st.master:
        names.append(st.master[0])
        dtypes.append(st.master[1])
    return names, dtypes


def _new_state(param, slots: tuple, st, init: float) -> list:
    """State arrays beside ``param``: the slots filled with ``init``, then the master slot
    (the param widened to float32, or zero remainders: a bf16 value splits exactly)."""
    kind = kind_of(param)
    made = [kind.zeros(param, st.state, init) for _ in slots]
    if st.mode == "master":
        made.append(kind.astype(param, "float32"))
    elif st.mode == "remainder":
        made.append(kind.zeros(param, "int16"))
    elif st.mode == "kahan":
        made.append(kind.zeros(param, st.param))  # nothing lost yet
    return made


def check_seed(seed) -> int:
    """``seed`` as an int in [0, 2**32), or a ValueError saying what came in."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral,)) or \
            not 0 <= int(seed) < 2 ** 32:
        raise ValueError(f"seed must be an int in [0, 2**32) (the key of stochastic "
                         f"rounding's random bits), got {seed!r}")
    return int(seed)


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


def _any(flags) -> bool:
    """Whether any per-tensor inf/NaN flag is set (a host read of a device array)."""
    return bool(flags.any()) if flags.size else False


def _full(on_device: bool, n: int, grad_scale):
    """``n`` copies of 1/grad_scale (float64): in host memory for the CPU backends (whatever
    the arrays' library), else as a CuPy array on the current device."""
    if on_device:
        import cupy as xp
    else:
        xp = np
    return xp.zeros(n, np.float64) + 1.0 / xp.asarray(grad_scale, np.float64)
