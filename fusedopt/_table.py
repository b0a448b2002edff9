"""The multi-tensor launch table, shared by the CUDA and CPU backends.

Layout (int64; T tensors, NS state slots, B work items), documented in kernels/common.cuh:

    [0 : (2+NS)*T)          operand addresses, operand-major: param, grad, slot 0, ...
    [(2+NS)*T : (3+NS)*T)   element counts
    [(3+NS)*T : (4+NS)*T)   grad scales: float64 bits, 1.0 unless clipping by norm
    [(4+NS)*T : (5+NS)*T)   grad limits: float64 bits, +inf unless clipping by value
    [(5+NS)*T : ... + B)    work items: (tensor << 32) | chunk index

A work item is one CUDA block or one CPU task. Empty tensors get no work item. Every
kernel and loop clips each grad on load to clamp(g * scale, -limit, limit) (fusedopt/_clip.py).
"""

from __future__ import annotations

import numpy as np

_CHUNK_BITS = 32


def work_items(sizes: np.ndarray, chunk: int) -> np.ndarray:
    """(tensor << 32) | chunk for every chunk of every non-empty tensor, in order."""
    counts = -(-sizes // chunk)
    tensors = np.repeat(np.arange(sizes.size, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    chunks = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    if chunks.size and chunks.max() >= 1 << _CHUNK_BITS:
        raise ValueError(f"a tensor of {int(sizes.max())} elements needs more than 2**32 chunks "
                         f"of {chunk}; raise fusedopt.config chunk sizes")
    return (tensors << _CHUNK_BITS) | chunks


def float_row(values, n: int) -> np.ndarray:
    """``n`` float64 values (or one broadcast) as the int64 bits a table row holds."""
    return np.broadcast_to(np.asarray(values, np.float64), (n,)).copy().view(np.int64)


def rows(n_slots: int, n_tensors: int) -> dict[str, int]:
    """Offset of each per-tensor row of the table."""
    return {"sizes": (2 + n_slots) * n_tensors, "scales": (3 + n_slots) * n_tensors,
            "limits": (4 + n_slots) * n_tensors, "work": (5 + n_slots) * n_tensors}


def build(addresses: np.ndarray, sizes: np.ndarray, chunk: int,
          limit: float = np.inf) -> np.ndarray:
    """Table for ``addresses`` of shape (2 + NS, T) and ``sizes`` of shape (T,): grad scale
    1.0 and grad limit ``limit`` for every tensor."""
    n = sizes.size
    return np.concatenate([addresses.ravel(), sizes, float_row(1.0, n), float_row(limit, n),
                           work_items(sizes, chunk)]).astype(np.int64)


class Table:
    """A launch table that is rebuilt only when the tensors it describes change.

    ``update`` takes the operand addresses of this step; when they and the sizes equal the
    last step's it returns the same array without copying (so a device copy can be reused),
    else it rebuilds. ``version`` counts rebuilds, for callers that mirror it on a device.
    """

    def __init__(self, chunk: int):
        self.chunk = chunk
        self.limit = np.inf
        self.array: np.ndarray | None = None
        self.version = 0
        self._addresses: np.ndarray | None = None
        self._sizes: np.ndarray | None = None
        self.n_work = 0

    def update(self, addresses: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        same_sizes = self._sizes is not None and np.array_equal(sizes, self._sizes)
        if same_sizes and np.array_equal(addresses, self._addresses):
            return self.array
        if same_sizes:
            self.array[: addresses.size] = addresses.ravel()
        else:
            self.array = build(addresses, sizes, self.chunk, self.limit)
            self._sizes = sizes.copy()
            self.n_work = self.array.size - addresses.size - 3 * sizes.size
        self._addresses = addresses.copy()
        self.version += 1
        return self.array

    def set_limit(self, limit: float) -> None:
        """Clip grads to [-limit, limit] from now on (+inf: not at all)."""
        limit = float(limit)
        if limit == self.limit:
            return
        self.limit = limit
        if self.array is not None:
            start = rows(self._addresses.shape[0] - 2, self._sizes.size)["limits"]
            self.array[start: start + self._sizes.size] = float_row(limit, self._sizes.size)
            self.version += 1
