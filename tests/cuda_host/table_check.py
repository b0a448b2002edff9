"""What the launch-table ABI (kernels/common.cuh) asks of a launch, checked before it runs.

A GPU would fault, or silently update the wrong memory, if the table the backend built
pointed outside the arrays it describes, missed or repeated a chunk, or sent a block into
the vector loop at an address that is not 16-byte aligned. These checks run on every
launch of an entry point whose parameters begin with the table ABI's
``(const long long* table, int n_tensors, long long chunk)``.
"""

from __future__ import annotations

import re

import numpy as np

from fusedopt import _table

TABLE_PARAMS = ("*int64", "int32", "int64")

#: Bytes per 128-bit vector access (fusedopt::VecWidth in kernels/common.cuh).
VECTOR_BYTES = 16

#: CUDA storage type -> (storage dtype, compute dtype): state slots hold the compute type.
STORAGE = {
    "float": ("float32", "float32"),
    "double": ("float64", "float64"),
    "__half": ("float16", "float32"),
    "__nv_bfloat16": ("bfloat16", "float32"),
}

#: Most state slots a table may describe (the kernels' s[] arrays are sized at compile time).
MAX_SLOTS = 8

_FIRST_TEMPLATE_ARG = re.compile(r"<\s*([\w:]+)")


def uses_table(signature) -> bool:
    return tuple(signature[:3]) == TABLE_PARAMS


def check(name: str, grid, args, find_buffer) -> None:
    """Raise ValueError if the launch of ``name`` would leave its tensors' memory.

    ``find_buffer(address, nbytes)`` returns the array the runtime handed out that holds
    ``[address, address + nbytes)``, or None.
    """
    table, n_tensors, chunk = args[0], int(args[1]), int(args[2])
    match = _FIRST_TEMPLATE_ARG.search(name)
    if not match or match.group(1) not in STORAGE:
        raise ValueError(f"{name}: cannot tell the storage type from the name expression; "
                         f"add it to STORAGE in {__file__}")
    storage, compute = (np.dtype(d) for d in STORAGE[match.group(1)])
    table = np.asarray(table)
    n_work = grid[0] * grid[1] * grid[2]
    if n_tensors <= 0:
        raise ValueError(f"{name}: launched for {n_tensors} tensors")
    n_slots, rows = _layout(table.size, n_tensors, n_work)
    if n_slots is None:
        raise ValueError(f"{name}: a table of {table.size} entries does not fit {n_tensors} "
                         f"tensors and {n_work} work items (one block per work item) for any "
                         "number of state slots")
    if chunk <= 0 or chunk * storage.itemsize % VECTOR_BYTES:
        raise ValueError(f"{name}: chunk {chunk} is not a multiple of the {VECTOR_BYTES}-byte "
                         "vector width; the kernel's vector loop would start misaligned")
    addresses = table[: (2 + n_slots) * n_tensors].reshape(2 + n_slots, n_tensors)
    sizes = table[rows["sizes"]: rows["sizes"] + n_tensors]
    work = table[rows["work"]:]
    for t in range(n_tensors):
        for k in range(2 + n_slots):
            _check_operand(name, t, k, int(addresses[k, t]), int(sizes[t]),
                           storage if k < 2 else compute, find_buffer)
    expected = {(t, c) for t in range(n_tensors) for c in range(-(-int(sizes[t]) // chunk))}
    got = [(int(w) >> 32, int(w) & 0xFFFFFFFF) for w in work]
    if len(got) != len(set(got)) or set(got) != expected:
        raise ValueError(f"{name}: the work items do not cover every chunk of every tensor "
                         f"exactly once ({len(got)} items, {len(expected)} chunks)")


def _layout(length: int, n_tensors: int, n_work: int):
    """(state slots, row offsets) of a table of ``length`` entries, or (None, None).

    The row offsets come from fusedopt._table when it provides them, so the check follows
    the layout the backend actually builds.
    """
    for n_slots in range(MAX_SLOTS + 1):
        rows = _rows(n_slots, n_tensors)
        if rows["work"] + n_work == length:
            return n_slots, rows
    return None, None


def _rows(n_slots: int, n_tensors: int) -> dict[str, int]:
    if hasattr(_table, "rows"):
        return _table.rows(n_slots, n_tensors)
    return {"sizes": (2 + n_slots) * n_tensors, "work": (3 + n_slots) * n_tensors}


def _check_operand(name, t, k, address, size, dtype, find_buffer) -> None:
    what = f"{name}: operand {k} of tensor {t}"
    if address % dtype.itemsize:
        raise ValueError(f"{what} at {address:#x} is not aligned to its {dtype.itemsize}-byte "
                         "elements; a GPU faults on it")
    buffer = find_buffer(address, size * dtype.itemsize)
    if buffer is None:
        raise ValueError(f"{what}: {size} elements at {address:#x} are not inside any array "
                         "the runtime handed out (address(), zeros(), to_device())")
    if buffer.dtype.itemsize != dtype.itemsize:
        raise ValueError(f"{what} points into a {buffer.dtype} array; the kernel reads it as "
                         f"{dtype}")
