"""A group: the params of one storage (fusedopt/memory/storage.py) that one backend updates in one
call.

It owns what stays the same from step to step - the param and state addresses (the master
slot, if any, last), sizes and the launch table - so that a step only looks at its
gradients. The grads' dtype is the step's: ``storage.grad`` is the param's until a step
says otherwise (:func:`step_storage`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .arrays import kind_of
from .storage import Storage, default_state_dtype
from .table import Table


@dataclass
class Group:
    storage: Storage
    params: list
    states: list            # states[i]: the slot arrays of params[i], in kernel order
    chunk: int
    fixed: np.ndarray       # (2 + NS, T) int64: param and slot addresses; row 1 (grads) unset
    sizes: np.ndarray
    pack: bool = False      # CPU: let one work item cover several small tensors
    table: Table = field(init=False)
    device_table: object = None
    device_version: int = -1
    grads_scaled: bool = False  # the table's grad-scale row holds a norm clip's scales
    scratch: dict = field(default_factory=dict)  # device buffers reused from step to step
    streams: np.ndarray | None = None  # per tensor: (seed << 32) | position (fusedopt/memory/table.py)
    averaged: bool = False  # use_ema: each param's moving average is the last slot row

    def __post_init__(self):
        self.table = Table(self.fixed, self.sizes, self.chunk, self.pack, self.streams)

    @property
    def dtype(self) -> str:
        """The params' dtype."""
        return self.storage.param

    @property
    def n_slots(self) -> int:
        """Slot rows of the table: the optimizer's slots, the master slot, the average."""
        return self.fixed.shape[0] - 2


def as_storage(storage) -> Storage:
    """``storage``, or for a dtype name its default storage (grads of the param's dtype,
    the default state dtype, no master)."""
    if isinstance(storage, Storage):
        return storage
    return Storage(storage, storage, default_state_dtype(storage))


def step_storage(group: Group, grads) -> Storage:
    """The group's storage with the grads of this step (all of one dtype)."""
    if not grads:
        return group.storage
    seen = group.scratch.setdefault("storage_by_grad", {})  # grad dtype object -> Storage
    key = getattr(grads[0], "dtype", None)
    found = seen.get(key)
    if found is None:
        grad = kind_of(grads[0]).dtype(grads[0])
        st = group.storage
        found = st if grad == st.grad else st.with_grad(grad)
        seen[key] = found
    return found


def make_group(storage, params, states, chunk, address, pack: bool = False,
               streams=None, averages=None) -> Group:
    """The group of ``params`` with their ``states`` (slot arrays, master slot last) and,
    with ``use_ema`` on a backend that updates them in the step's pass, their moving
    ``averages``, one more slot row after the others."""
    if averages is not None:
        states = [list(s) + [a] for s, a in zip(states, averages)]
    n_slots = len(states[0]) if states else 0
    fixed = np.zeros((2 + n_slots, len(params)), dtype=np.int64)
    for t, (p, slots) in enumerate(zip(params, states)):
        fixed[0, t] = address(p)
        for k, s in enumerate(slots):
            fixed[2 + k, t] = address(s)
    sizes = np.array([kind_of(p).size(p) for p in params], dtype=np.int64)
    return Group(as_storage(storage), list(params), [list(s) for s in states], chunk, fixed,
                 sizes, pack, streams=streams, averaged=averages is not None)


def step_table(group: Group, grads, address) -> np.ndarray:
    """The launch table for this step's gradients (written only if a grad moved)."""
    return group.table.set_grads([address(g) for g in grads])


@dataclass(frozen=True)
class GradClip:
    """What one backend step applies to its grads: per-tensor ``scales`` (a float64 array
    on the grads' device, one float for every tensor, or None for 1.0) and one value
    ``limit`` (+inf for none)."""

    scales: object = None
    limit: float = math.inf

    @property
    def active(self) -> bool:
        return self.scales is not None or self.limit != math.inf


NO_CLIP = GradClip()
