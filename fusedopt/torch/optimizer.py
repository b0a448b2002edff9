"""The base of fusedopt.torch's classes: a ``torch.optim.Optimizer`` whose step is the engine's.

It translates and nothing more (fusedopt/engine/engine.py steps): torch's param groups become the
engine's hyperparameter groups, each param's memory (a DTensor's local shard) an engine
position, torch's state keys the engine's slots, GradScaler's attributes the engine's loss
scaling. What torch.optim keeps, it keeps: ``param_groups`` (read at every step, so
``torch.optim.lr_scheduler`` works unchanged), ``state`` (the engine's own state tensors
under torch's keys, with a ``step`` per param), ``state_dict()`` and ``zero_grad()`` are
torch's own, and ``load_state_dict`` takes torch.optim's checkpoints.
"""

from __future__ import annotations

from collections import defaultdict
from operator import itemgetter

import numpy as np
import torch

from ..algorithms.registry import lookup
from ..backends.cpu import threads as _cpu_threads
from ..engine.engine import Engine
from . import _checkpoint, _checks, _compile, _layout, _quantized, _reshard
from ._amp import AmpScaling
from ._local import is_distributed, like_param, local, whole_size
from ._names import MASTER_KEYS, Row, storage_mode, storage_policy
from ._values import Held, immutable, plain, rounds, same, scalar_dtype


class Optimizer(torch.optim.Optimizer):
    """A torch optimizer stepped by fusedopt: one fused pass over every param per dtype and
    device, on the tensors' own memory (CPU: Numba; CUDA: a kernel on torch's current
    stream, no host synchronization).

    Subclasses set ``_row`` (fusedopt/torch/_names.py); see fusedopt/torch/_checks.py for
    the flags and what is refused.
    """

    _row: Row
    #: True to GradScaler.step, which then sets ``grad_scale`` and ``found_inf`` and lets
    #: step() unscale and skip; False to others (Lightning clips): fusedopt/torch/_amp.py.
    _step_supports_amp_scaling = AmpScaling()

    def __init__(self, params, defaults: dict):
        _compile.prepare(self)
        self._fresh_engine()
        super().__init__(params, defaults)

    # --- the engine and what it holds ---------------------------------------------------------
    def _fresh_engine(self) -> None:
        self._spec = lookup(self._row.registry)
        self._engine = Engine(self._spec, "torch", per_param_steps=True)
        self._held: dict[int, Held] = {}   # id(param) -> what the engine steps
        self._seen: list[tuple] = []          # per group: its values the engine has
        self._raw: dict[int, tuple] = {}      # group -> its values as _seen, if immutable
        self._keys = itemgetter(*self._row.group_defaults)  # a group's values (a tuple)
        self._device_type = None              # "cpu" or "cuda" once a group has params
        # torch's per-param ``step`` (and derived entries, NAdam's ``mu_product``) are 0-d
        # views into one buffer per batch of params taken together, so that a step advances them all with
        # one tensor operation per buffer (200 in-place adds cost more than the step's math).
        self._homes: dict[int, tuple] = {}    # position -> (buffer id, offset)
        self._buffers: list[tuple] = []       # buffer id -> (steps, {derived key: values})
        self._counters: dict = {}             # positions -> _counter_plan(positions)
        self._repeats = False                 # a group lists a param twice: stepped twice
        self._rebuilds = self.__dict__.get("_rebuilds", 0)  # engines made from the state

    def _hyper(self, group: dict) -> dict:
        """What the engine takes of a checked group, in torch's names (it translates them).
        Adafactor's ``eps[0]`` None is torch's machine epsilon of the group's (first)
        param dtype, as torch.optim.Adafactor takes it."""
        hyper = {key: plain(group[key]) for key in self._row.hyper_names}
        eps = hyper.get("eps")
        if self._spec.factored is not None and isinstance(eps, tuple) and eps[0] is None \
                and group["params"]:
            hyper["eps"] = (torch.finfo(group["params"][0].dtype).eps, eps[1])
        return hyper

    def _values(self, group: dict) -> tuple:
        return tuple(map(plain, self._keys(group)))

    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group, then fusedopt's checks; a refused group is not added."""
        if self.__dict__.get("_engine", False) is None:  # unpickled: make the engine first
            self._rebuild()
        index = len(self.param_groups)
        super().add_param_group(param_group)
        try:
            self._admit(index, self.param_groups[index])
            if self._row.eager:  # torch makes Adagrad's state at once (not on meta: later)
                self._hold(index, [(j, p) for j, p in
                                   enumerate(self.param_groups[index]["params"])
                                   if not local(p).is_meta])
        except BaseException:  # nothing of the group stays
            del self.param_groups[index:]
            del self._seen[index:]
            self._raw.clear()
            del self._engine.hypers[index:]
            raise

    def _admit(self, index: int, group: dict) -> None:
        row = self._row
        _checks.flags(index, group, row)
        _checks.hyper(index, group, row)
        _checks.storage(index, group)
        _checks.params(index, group, self._spec, self._device_type)
        self._check_seed(index, group)
        self._engine.add_group(self._hyper(group), where=f"param group {index}: ",
                               names=row.hyper_names, **storage_policy(group))
        self._engine.seed = group["seed"]
        self._seen.append(self._values(group))
        self._raw.clear()
        params = group["params"]
        self._repeats = self._repeats or len({id(p) for p in params}) != len(params)
        placed = [p for p in params if not local(p).is_meta]
        if placed and self._device_type is None:
            self._device_type = local(placed[0]).device.type

    def _check_seed(self, index: int, group: dict) -> None:
        """Group ``index``'s seed against the others': one seed keys the whole optimizer's
        random bits (with each param's position and step), so every group carries it."""
        others = [g["seed"] for g in self.param_groups[:index] + self.param_groups[index + 1:]
                  if "seed" in g]
        if others and any(seed != group["seed"] for seed in others):
            raise ValueError(f"param group {index}: seed={group['seed']!r}, but the other "
                             f"groups have seed={others[0]!r}: the seed is the optimizer's "
                             "(its random bits are keyed on it with each param's position "
                             "and step); give every group the same seed")

    def _hold(self, index: int, items: list, saved: bool = False) -> None:
        """Give the engine the params ``items`` ((j, param) of group ``index``), with fresh
        state, or with ``saved`` state from ``self.state`` (a loaded checkpoint)."""
        once = {}  # a param listed twice is held once (and stepped twice: _gather_once)
        for j, p in items:
            if id(p) not in self._held:
                once.setdefault(id(p), (j, p))
        items = list(once.values())
        if not items:
            return
        _checks.placed(index, self.param_groups[index], items, self._spec,
                       self._device_type)
        memory = [local(p) if is_distributed(p) else p.detach() for _, p in items]
        layouts = [_layout.of(m, matrices=self._spec.matrix is not None) for m in memory]
        if self._spec.factored is not None:
            _checks.factored_layouts(index, items, layouts, self._spec)
        memory = [m if lay is None else lay.inward(m) for m, lay in zip(memory, layouts)]
        states = steps = None
        if saved:
            loaded = [_checkpoint.saved(self, index, j, p, m, lay)
                      for (j, p), m, lay in zip(items, memory, layouts)]
            states, steps = [s for s, _ in loaded], [t for _, t in loaded]
        positions = self._engine.add_params(memory, group=index, states=states,
                                            sizes=[whole_size(p, m) for (_, p), m
                                                   in zip(items, memory)])
        if steps is not None:
            for pos, t in zip(positions, steps):
                self._engine.steps[pos] = t
        counts = self._engine.steps
        buffer = len(self._buffers)
        self._buffers.append((
            torch.tensor([float(counts[pos]) for pos in positions], dtype=scalar_dtype()),
            {d.key: torch.tensor([self._derived(d, index, counts[pos]) for pos in positions],
                                 dtype=scalar_dtype()) for d in self._row.derived}))
        if self._device_type is None:
            self._device_type = memory[0].device.type
        for k, ((j, p), m, pos, lay) in enumerate(zip(items, memory, positions, layouts)):
            self._held[id(p)] = Held(pos, m, is_distributed(p), lay)
            self._homes[pos] = (buffer, k)
            self._expose(p, pos)

    def _expose(self, param, pos: int) -> None:
        """Put the engine's state of ``param`` into ``self.state`` under torch's keys."""
        row, engine = self._row, self._engine
        slots = dict(zip(engine.slot_names(pos), engine.states[pos]))
        state = {}
        buffer, k = self._homes[pos]
        steps, derived = self._buffers[buffer]
        if row.counts_steps:
            state["step"] = steps[k]
        for key, values in derived.items():
            state[key] = values[k]
        layout = self._held[id(param)].layout
        coded = _checkpoint.coded_slots(engine, pos)  # buffers of blocks
        for slot, key in row.state + tuple(MASTER_KEYS.items()):
            if slot in slots and _checkpoint.present(self._spec, slot, param):
                flat = slot in coded
                value = slots[slot] if layout is None or flat else layout.outward(slots[slot])
                # a shard's blocks are its own: no DTensor (fusedopt/torch/_quantized.py)
                state[key] = value if flat else like_param(param, value)
        if state:
            self.state[param] = state

    def _derived(self, entry, index: int, step: int) -> float:
        return _checkpoint.derived(self, entry, index, step)

    # --- the step -----------------------------------------------------------------------------
    def step(self, closure=None):
        """One fused step of every param that has a grad (params whose grad is None are
        skipped and keep their step count). With GradScaler, grads are unscaled inside the
        pass and a step with an inf or NaN grad changes nothing."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        _compile.step(self)  # without grad; one custom op where torch.compile traces it
        return loss

    def _fused(self) -> None:
        """The step itself, which torch.compile sees as one op (fusedopt/torch/_compile.py)."""
        if self._engine is None:  # unpickled: the state is torch's, the engine is made anew
            self._rebuild()
        for grads, positions in self._gather():  # one round, unless a param is listed twice
            if not positions:
                return
            # A CPU step runs on torch's threads, read now (fusedopt/backends/cpu/threads.py).
            with _cpu_threads.following(torch.get_num_threads()):
                applied = self._engine.step(grads, positions,
                                            grad_scale=getattr(self, "grad_scale", None),
                                            found_inf=getattr(self, "found_inf", None))
            if applied:
                self._advance(tuple(positions))

    def _gather(self):
        """This step's rounds: grads and the engine positions of their params, in group
        order. One round, and one more for each further time a group lists a param: torch
        steps a param listed twice twice (it warns when the group is added)."""
        rebuilt = False
        while True:
            grads, positions, fresh, moved = self._gather_once()
            if fresh:  # first grads of these params: the engine takes them, then again
                for index, items in fresh.items():
                    self._hold(index, items)
            elif moved:  # .data replaced or the model moved: take the state along
                if rebuilt:
                    raise RuntimeError(f"{moved}: its memory changed again while fusedopt "
                                       "rebuilt its launch tables")
                self._rebuild()
                rebuilt = True
            elif self._repeats:
                return rounds(grads, positions)
            else:
                return ((grads, positions),)

    def _gather_once(self):
        held = self._held
        grads, positions, fresh, moved = [], [], {}, None
        strided = torch.strided
        keys, raws = self._keys, self._raw
        for index, group in enumerate(self.param_groups):
            raw = keys(group)
            if not (index in raws and same(raws[index], raw)):
                values = self._values(group)
                if values != self._seen[index]:
                    self._retune(index, group, values)
                if immutable(raw):  # the next step compares these as they are
                    raws[index] = raw
            for j, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                if g.layout is not strided:
                    _checks.grad(index, j, p, g)
                entry = held.get(id(p))
                if entry is None:
                    fresh.setdefault(index, []).append((j, p))
                    continue
                if entry.sharded:
                    if p._local_tensor.data_ptr() != entry.address:
                        moved = f"param group {index}, param {j}"
                    g = g._local_tensor
                elif p.data_ptr() != entry.address:
                    moved = f"param group {index}, param {j}"
                if entry.layout is not None:
                    g = entry.layout.grad(g, f"param group {index}, param {j}")
                grads.append(g)
                positions.append(entry.position)
        return grads, positions, fresh, moved

    def _retune(self, index: int, group: dict, values: tuple) -> None:
        """A group's values changed (a scheduler, or the user): hand the new ones over."""
        _checks.flags(index, group, self._row)
        _checks.hyper(index, group, self._row)
        _checks.storage(index, group)
        policy = storage_policy(group)
        hypers = self._engine.hypers[index]
        if (policy["state_dtype"], storage_mode(group)) != (hypers.state_dtype, hypers.mode):
            _checks.params(index, group, self._spec, None)
        self._check_seed(index, group)
        self._engine.set_hyper(index, self._hyper(group), where=f"param group {index}: ",
                               names=self._row.hyper_names,
                               **policy)
        self._engine.seed = group["seed"]
        self._seen[index] = values
        self._raw.clear()

    def _advance(self, positions: tuple) -> None:
        """torch's ``state["step"] += 1`` for the params stepped (one operation per buffer),
        and the derived entries (NAdam's mu_product) for their new step. A buffer in host
        memory is advanced through a NumPy view of it: the same float add in the buffer's
        dtype, in less than half the time of a torch operation (one counter: a tenth)."""
        plan = self._counters.get(positions)
        if plan is None:
            plan = self._counters[positions] = self._counter_plan(positions)
        if not self._row.counts_steps:
            return
        for buffer, offsets, members, host in plan:
            steps, derived = self._buffers[buffer]
            if host is None:
                if offsets is None:
                    steps.add_(1.0)
                else:
                    steps.index_add_(0, offsets, torch.ones(len(offsets), dtype=steps.dtype))
            elif offsets is None:
                if host.size == 1:  # a scalar's add, rounded to the buffer's dtype alike
                    host[0] += 1.0
                else:
                    np.add(host, 1.0, out=host)
            else:
                np.add.at(host, offsets.numpy(), 1.0)
            for entry in self._row.derived:
                group_of, counts = self._engine.group_of, self._engine.steps
                held = derived[entry.key]
                values = torch.tensor([self._derived(entry, group_of[pos], counts[pos])
                                       for pos in members], dtype=held.dtype)
                if offsets is None:
                    held.copy_(values)
                else:
                    held.index_copy_(0, offsets, values)

    def _counter_plan(self, positions: tuple) -> list:
        """For each counter buffer holding some of ``positions``: (buffer id, the offsets
        of those in it, or None for all of it, their positions, a NumPy view of the buffer
        where it is in host memory, else None)."""
        by_buffer: dict[int, list] = {}
        for pos in positions:
            buffer, k = self._homes[pos]
            by_buffer.setdefault(buffer, []).append((k, pos))
        plan = []
        for b, ks in by_buffer.items():
            steps = self._buffers[b][0]
            offsets = None if len(ks) == len(steps) else torch.tensor([k for k, _ in ks])
            host = steps.numpy() if steps.device.type == "cpu" else None
            plan.append((b, offsets, [pos for _, pos in ks], host))
        return plan

    # --- checkpoints ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load_state_dict (a torch.optim checkpoint of this class loads too); the
        state is then copied into fusedopt's own tensors. Refused checkpoints change
        nothing."""
        before = (self.state, self.param_groups)
        state_dict = _reshard.from_global(self, _quantized.from_bitsandbytes(self, state_dict))
        super().load_state_dict(state_dict)
        saved = _checkpoint.originals(self, state_dict)
        for param, entry in self.state.items():  # torch cast them to the param's dtype
            if not isinstance(entry, dict):  # a hook's own entry (torch keeps any value)
                continue
            for key in entry:
                if (id(param), key) in saved:
                    entry[key] = saved[id(param), key].to(device=param.device)
        try:
            self._rebuild()
        except BaseException:
            self.state, self.param_groups = before
            raise

    def state_dict(self) -> dict:  # quantized slots: _quantized.py, _reshard.py for DCP
        return _reshard.state_dict(self, super().state_dict())

    def __setstate__(self, state: dict) -> None:
        _compile.prepare(self)
        super().__setstate__(state)
        defaults = {**self._row.group_defaults, **self.__dict__.get("defaults", {})}
        for group in self.param_groups:  # torch.optim's checkpoints lack our storage keys
            for key in self._row.group_defaults:  # (and another Lion's, our flags)
                group.setdefault(key, defaults[key])
            group.update(self._row.fixed)  # AdamW's, also from an Adam checkpoint (as torch)
        if "_held" not in self.__dict__:  # unpickled, or a copy: rebuilt at the first step
            self._engine = None

    def _rebuild(self) -> None:
        """A new engine for ``param_groups`` and ``state`` as they are now (torch's layout)."""
        kept = {k: self.__dict__[k] for k in ("_spec", "_engine", "_held", "_seen", "_keys",
                                               "_device_type", "_homes", "_buffers",
                                               "_counters", "_repeats", "_raw")
                if k in self.__dict__}
        state = dict(self.state)
        self._fresh_engine()
        try:
            for index, group in enumerate(self.param_groups):
                self._admit(index, group)
                params = list(enumerate(group["params"]))
                self._hold(index, [(j, p) for j, p in params if state.get(p)], saved=True)
                if self._row.eager:  # not on meta: at the first step, as in add_param_group
                    self._hold(index, [(j, p) for j, p in params
                                       if not state.get(p) and not local(p).is_meta])
        except BaseException:
            self.__dict__.update(kept)
            self.state = defaultdict(dict, state)
            raise
        self._rebuilds += 1
