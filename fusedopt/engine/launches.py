"""Launch groups: the params of a step split by hyperparameter group, device, storage, weight
decay and step count, each one backend group with its launch table, kept while the step's
positions stay the same."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..memory import storage as _storage
from ..memory import table as _table
from ..memory.arrays import kind_of
from . import validate as _validate


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


class LaunchGroups:
    """The launch groups of an :class:`~fusedopt.engine.engine.Engine`."""

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
        steps = ()
        if self.per_param_steps:
            counts = self._steps
            first = counts[positions[0]]
            steps = tuple([counts[pos] - first for pos in positions])
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
        # Muon's passes make groups of their own (fusedopt/engine/orthogonal.py): its
        # averages move after the weight pass, in the step's finish.
        fuse_average = (self.ema is not None and getattr(backend, "FUSED_AVERAGE", False)
                        and self.spec.matrix is None)
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
