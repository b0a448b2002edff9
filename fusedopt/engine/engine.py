"""The engine: the one step loop behind every front door.

    validate -> group by dtype and device -> launch table -> scalars -> grad pre-pass
             -> per-tensor reductions (an optimizer that declares them) -> launch
             (Muon: two element passes around a batched matrix transform instead,
             fusedopt/engine/orthogonal.py)

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
group is one kernel launch (CUDA) or one Numba call (CPU). A step on the host with none of
the phases between (fusedopt/engine/plain.py) skips their calls, and launches again what the
last such step over the same positions launched when nothing it was found by has changed.

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

import numbers

import numpy as np

from ..algorithms.registry import OptimizerSpec, lookup
from ..memory import storage as _storage
from ..memory.arrays import kind_of
from ..memory.initial import new_state, slot_dtypes
from ..memory.steps import Window
from . import validate as _validate
from .clip import NONE, Clipping
from .ema import MovingAverage
from .hypers import HyperGroup, HyperGroups
from .launches import LaunchGroups
from .plain import PlainSteps
from .step import StepPhases


class Engine(HyperGroups, LaunchGroups, PlainSteps, StepPhases):
    """Every step of one registered optimizer, for every front door."""

    #: Params with fewer elements keep float32 state under ``state_dtype="q8"``/``"q4"``.
    min_quantized_size = _storage.MIN_QUANTIZED_SIZE

    def __init__(self, spec: OptimizerSpec, convention: str = "keras", *, backend: str = "auto",
                 clipping: Clipping = NONE, per_param_steps: bool = False,
                 state_dtype=None, master_weights=False, ema: MovingAverage | None = None,
                 stochastic_rounding=False, kahan_summation=False, seed=0,
                 min_quantized_size=_storage.MIN_QUANTIZED_SIZE):
        self.spec, self.convention, self.backend = spec, convention, backend
        self.clipping = clipping
        self.ema = ema                    # use_ema: a moving average of every param
        self.averages: list = []          # position -> its moving average (with ema)
        self.per_param_steps = per_param_steps
        _storage.check_state_dtype(state_dtype)
        self.state_dtype = state_dtype
        self.min_quantized_size = _storage.check_min_quantized_size(min_quantized_size)
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
        # Optimizers with two points (schedule-free: fusedopt/engine/modes.py): the params
        # hold the evaluation point, and the training point each kept for the way back.
        self.evaluating = False
        self.kept: list | None = None

    # --- params and state -------------------------------------------------------------------
    def storage_of(self, position: int, param, group: int | None = None,
                   size: int | None = None) -> "_storage.Storage":
        """The storage ``param`` gets at ``position`` in hyperparameter group ``group``
        (default: the position's group, else the engine's policy); raises naming it and
        the fix. ``size``: the elements ``param`` counts as against ``min_quantized_size``
        (default its own; see :meth:`add_params`)."""
        if group is None and position < len(self.group_of):
            group = self.group_of[position]
        if group is None or group >= len(self.hypers):
            policy = (self.state_dtype, self.mode)
        else:
            policy = (self.hypers[group].state_dtype, self.hypers[group].mode)
        dtype = kind_of(param).dtype(param)
        state, mode = _storage.resolve(f"param {position}", dtype, *policy,
                                       size=kind_of(param).size(param) if size is None
                                       else size,
                                       min_quantized_size=self.min_quantized_size)
        return _storage.Storage(dtype, dtype, state, mode)

    def add_params(self, params, group: int = 0, decays=None, states=None,
                   averages=None, sizes=None) -> list[int]:
        """Append ``params`` to hyperparameter group ``group``; returns their positions.

        State is made beside each param (``slot_init`` of the registry, in the state dtype;
        a master slot initialised from the param), unless ``states`` gives it (a list of
        slot arrays per param, master slot last, checked and used as is); likewise each
        param's moving average with ``ema``, unless ``averages`` gives them. Every param is
        checked before any is added.

        ``sizes``: the elements each param counts as when ``min_quantized_size`` decides
        whether its state is quantized (default: its own). A door that hands over one
        shard of a larger param (fusedopt.torch under FSDP2) passes the whole param's, so
        that every shard of a param makes the choice the unsharded param would. The blocks
        of quantized state still start at the array's own element 0.
        """
        params = list(params)
        decays = [True] * len(params) if decays is None else list(decays)
        if sizes is not None and len(sizes) != len(params):
            raise ValueError(f"{len(params)} params but {len(sizes)} sizes; pass one "
                             "size per param (or none)")
        first = len(self.params)
        slots = self.hypers[group].slots
        seen = set(self._index)
        storages = []
        for i, p in enumerate(params):
            _validate.check_pair(first + i, p, p, self.spec)
            storages.append(self.storage_of(first + i, p, group,
                                            None if sizes is None else sizes[i]))
            if id(p) in seen:
                raise ValueError(f"param {first + i} is already held by this optimizer (at "
                                 f"position {self._index.get(id(p), first + i)}); pass each "
                                 "param once")
            seen.add(id(p))
            if self.spec.factored is not None:
                _validate.check_factored(first + i, p, self.spec)
            if states is not None:
                _validate.check_state(first + i, p, states[i],
                                      *slot_dtypes(slots, storages[-1],
                                                   self.spec.signed_slots(
                                                       self.hypers[group].flags)),
                                      shapes=_slot_kinds(self.spec, slots))
            if averages is not None:
                _validate.check_state(first + i, p, [averages[i]], ["average"])
        if averages is not None and self.ema is None:
            raise ValueError("averages were given to an engine without use_ema")
        if params:
            _validate.check_distinct_memory(self.params + params)
            _validate.resolve_backend(self.backend, params, params,
                                      list(range(first, first + len(params))))
        made_all = []
        for i, p in enumerate(params):
            made = (list(states[i]) if states is not None
                    else self.initial_state(p, group, storages[i]))
            if not all(_validate.same_order(s, p) for s, kind in
                       zip(made, _slot_kinds(self.spec, slots)) if kind is None):
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

    def initial_state(self, param, group: int = 0, storage=None) -> list:
        """The state arrays :meth:`add_params` makes beside ``param`` in ``group`` (its
        ``storage``, by default the one it would get)."""
        storage = storage or self.storage_of(len(self.params), param, group)
        hypers = self.hypers[group]
        copies = {s.name for s in self.spec.slot_decls if s.from_param}
        return new_state(param, hypers.slots, storage, self.spec.slot_init(hypers.hyper),
                          self.spec.signed_slots(hypers.flags), copies,
                          _slot_kinds(self.spec, hypers.slots))

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
            if self.spec.running is not None:
                self._advance_running(positions)
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
        holds functions); launch groups, plans and the plain step's launches (addresses of
        this process's arrays) and the identity index are dropped and rebuilt on the first step."""
        state = dict(self.__dict__)
        state.update(spec=self.spec.name, _index=None, _launch_cache={}, _plans={}, _kept=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.spec = lookup(state["spec"])
        self._index = {id(p): i for i, p in enumerate(self.params)}

    # --- the step ---------------------------------------------------------------------------


def _slot_kinds(spec, slots: tuple) -> tuple:
    """The declared shape kind of each of ``slots`` (None: the param's shape)."""
    kinds = {s.name: s.shape for s in spec.slot_decls}
    return tuple(kinds[name] for name in slots)


def check_seed(seed) -> int:
    """``seed`` as an int in [0, 2**32), or a ValueError saying what came in."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral,)) or \
            not 0 <= int(seed) < 2 ** 32:
        raise ValueError(f"seed must be an int in [0, 2**32) (the key of stochastic "
                         f"rounding's random bits), got {seed!r}")
    return int(seed)
