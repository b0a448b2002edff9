"""The multi-tensor launch table, shared by the CUDA and CPU backends.

Layout (int64; T tensors, NS state slots, B work items), documented in kernels/common.cuh:

    [0 : (2+NS)*T)          operand addresses, operand-major: param, grad, slot 0, ...
    [(2+NS)*T : (3+NS)*T)   element counts
    [(3+NS)*T : (4+NS)*T)   grad scales: float64 bits, 1.0 unless clipping by norm
    [(4+NS)*T : (5+NS)*T)   grad limits: float64 bits, +inf unless clipping by value
    [(5+NS)*T : (6+NS)*T)   streams: (seed << 32) | param position, the key of each
                            tensor's random bits for stochastic rounding (0 unless given)
    [(6+NS)*T : ... + B)    work items: (tensor << 32) | chunk index

A work item is one CUDA block or one CPU task. Empty tensors get no work item. A CUDA
block updates one chunk. A CPU task runs from its start to the next task's start
(fusedopt/backends/cpu/loop.py), so a packed table, which drops the starts of chunks that would
leave a task smaller than a chunk, lets one task cover many small tensors. Every kernel
and loop clips each grad on load to clamp(g * scale, -limit, limit) (fusedopt/engine/clip.py).
"""

from __future__ import annotations

import numpy as np

_CHUNK_BITS = 32


def work_items(sizes: np.ndarray, chunk: int) -> np.ndarray:
    """(tensor << 32) | chunk for every chunk of every non-empty tensor, in order."""
    counts = -(-sizes // chunk)
    if counts.size and counts.max() > 1 << _CHUNK_BITS:  # checked before the items are made
        raise ValueError(f"a tensor of {int(sizes.max())} elements needs more than 2**32 chunks "
                         f"of {chunk}; raise fusedopt.config chunk sizes")
    tensors = np.repeat(np.arange(sizes.size, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    chunks = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    return (tensors << _CHUNK_BITS) | chunks


def packed(items: np.ndarray, sizes: np.ndarray, chunk: int) -> np.ndarray:
    """The starts of ``items`` that begin a task of at most ``chunk`` elements.

    Greedy, in order: a chunk joins the running task while the task stays within ``chunk``
    elements, else it starts a new one. Full chunks always start their own task; runs of
    small tensors (and the tail chunks before them) share one.
    """
    tensors = items >> _CHUNK_BITS
    lengths = np.minimum(chunk, sizes[tensors] - (items & ((1 << _CHUNK_BITS) - 1)) * chunk)
    keep = np.zeros(items.size, dtype=bool)
    running = chunk
    for k, length in enumerate(lengths.tolist()):
        if running + length > chunk:
            keep[k] = True
            running = 0
        running += length
    return items[keep]


def float_row(values, n: int) -> np.ndarray:
    """``n`` float64 values (or one broadcast) as the int64 bits a table row holds."""
    return np.broadcast_to(np.asarray(values, np.float64), (n,)).copy().view(np.int64)


def rows(n_slots: int, n_tensors: int) -> dict[str, int]:
    """Offset of each per-tensor row of the table."""
    return {"sizes": (2 + n_slots) * n_tensors, "scales": (3 + n_slots) * n_tensors,
            "limits": (4 + n_slots) * n_tensors, "streams": (5 + n_slots) * n_tensors,
            "work": (6 + n_slots) * n_tensors}


#: Rows of the table after the addresses that hold one entry per tensor.
PER_TENSOR_ROWS = 4


def streams(seed: int, positions) -> np.ndarray:
    """The stream row: ``(seed << 32) | position`` for each param position, as int64 bits
    (seed and positions taken modulo 2**32)."""
    positions = np.asarray(positions, dtype=np.uint64) & np.uint64(0xFFFFFFFF)
    return ((np.uint64(int(seed) & 0xFFFFFFFF) << np.uint64(32)) | positions).view(np.int64)


def build(addresses: np.ndarray, sizes: np.ndarray, chunk: int, pack: bool = False,
          limit: float = np.inf, stream_row=None) -> np.ndarray:
    """Table for ``addresses`` of shape (2 + NS, T) and ``sizes`` of shape (T,): grad scale
    1.0, grad limit ``limit`` and stream ``stream_row[t]`` (0 if None) for every tensor."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n = sizes.size
    items = work_items(sizes, chunk)
    if pack:
        items = packed(items, sizes, chunk)
    keys = np.zeros(n, np.int64) if stream_row is None else np.asarray(stream_row, np.int64)
    return np.concatenate([addresses.ravel(), sizes, float_row(1.0, n), float_row(limit, n),
                           keys, items]).astype(np.int64)


class Table:
    """The launch table of one group; only its grad addresses change from step to step.

    Params, state slots and sizes are fixed when the group is made, so the table is built
    once. :meth:`set_grads` writes this step's grad addresses and bumps ``version`` only
    when they differ from the last step's: a caller mirroring the table on a device copies
    it only then, and only the rows :meth:`changes_since` its copy (new grad tensors every
    step, as torch's autograd hands out, move one row: 8 bytes per tensor).
    """

    def __init__(self, addresses: np.ndarray, sizes: np.ndarray, chunk: int, pack: bool = False,
                 stream_row=None):
        self.chunk = chunk
        self.n_tensors = int(addresses.shape[1])
        self.n_slots = int(addresses.shape[0]) - 2
        self.limit = np.inf
        self.array = build(addresses, sizes, chunk, pack, stream_row=stream_row)
        self.n_work = self.array.size - addresses.size - PER_TENSOR_ROWS * self.n_tensors
        self.version = 0
        self._grads: list | None = None
        self._written: dict[str, int] = {}  # row -> the version that last wrote it
        starts = rows(self.n_slots, self.n_tensors)
        n = self.n_tensors
        self._rows = {"grads": slice(n, 2 * n),
                      "limits": slice(starts["limits"], starts["limits"] + n)}

    def set_grads(self, grads: list) -> np.ndarray:
        """The table for grads at addresses ``grads`` (a list of ints, one per tensor)."""
        if grads != self._grads:
            self.array[self.n_tensors: 2 * self.n_tensors] = grads
            self._grads = grads
            self._wrote("grads")
        return self.array

    def _wrote(self, row: str) -> None:
        self.version += 1
        self._written[row] = self.version

    def changes_since(self, version: int) -> list[slice] | None:
        """The slices of :attr:`array` written after ``version``; None when a copy of that
        version is no use (``version`` < 0: copy everything)."""
        if version < 0:
            return None
        return [self._rows[row] for row, v in self._written.items() if v > version]

    def set_limit(self, limit: float) -> None:
        """Clip grads to [-limit, limit] from now on (+inf: not at all)."""
        limit = float(limit)
        if limit == self.limit:
            return
        self.limit = limit
        start = rows(self.n_slots, self.n_tensors)["limits"]
        self.array[start: start + self.n_tensors] = float_row(limit, self.n_tensors)
        self._wrote("limits")
