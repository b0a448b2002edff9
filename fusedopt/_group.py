"""A group: the params of one dtype that one backend updates in one call.

It owns what stays the same from step to step - the param and state addresses, sizes and
the launch table - so that a step only looks at its gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._arrays import kind_of
from ._table import Table


@dataclass
class Group:
    dtype: str
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

    def __post_init__(self):
        self.table = Table(self.fixed, self.sizes, self.chunk, self.pack)

    @property
    def n_slots(self) -> int:
        return self.fixed.shape[0] - 2


def make_group(dtype, params, states, chunk, address, pack: bool = False) -> Group:
    n_slots = len(states[0]) if states else 0
    fixed = np.zeros((2 + n_slots, len(params)), dtype=np.int64)
    for t, (p, slots) in enumerate(zip(params, states)):
        fixed[0, t] = address(p)
        for k, s in enumerate(slots):
            fixed[2 + k, t] = address(s)
    sizes = np.array([kind_of(p).size(p) for p in params], dtype=np.int64)
    return Group(dtype, list(params), [list(s) for s in states], chunk, fixed, sizes, pack)


def step_table(group: Group, grads, address) -> np.ndarray:
    """The launch table for this step's gradients (written only if a grad moved)."""
    return group.table.set_grads([address(g) for g in grads])
