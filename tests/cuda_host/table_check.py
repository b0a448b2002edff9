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

from fusedopt.memory import table as _table
from fusedopt.memory.quant import FORMATS

TABLE_PARAMS = ("*int64", "int32", "int64")

#: Bytes per 128-bit vector access (fusedopt::VecWidth in kernels/common.cuh).
VECTOR_BYTES = 16

#: CUDA storage type -> NumPy dtype name (bfloat16 as ml_dtypes names it).
STORAGE = {"float": "float32", "double": "float64", "__half": "float16",
           "__nv_bfloat16": "bfloat16"}

#: CUDA tag of a quantized format (kernels/quantized.cuh) -> its name: such a slot is a
#: uint8 buffer of blocks (fusedopt/memory/quant.py), each starting with a float32 absmax.
QUANTIZED = {"fusedopt::Q8": "q8", "fusedopt::Q4": "q4"}

#: The master slot of each MODE (kernels/common.cuh): none, float32 masters, int16
#: remainders, a Kahan compensation of the param's type ("param"), none (stochastic).
MASTER_SLOT = {0: None, 1: "float32", 2: "int16", 3: "param", 4: None}

#: Most state slots a table may describe (the kernels' s[] arrays are sized at compile time).
MAX_SLOTS = 8

#: The optimizer ABI's parameters after the table's: scalar rows, control block, flag ring.
STEP_PARAMS = 3

_TEMPLATE_ARGS = re.compile(r"<(.*)>")


def uses_table(signature) -> bool:
    return tuple(signature[:3]) == TABLE_PARAMS


def check(name: str, grid, args, find_buffer) -> None:
    """Raise ValueError if the launch of ``name`` would leave its tensors' memory.

    ``find_buffer(address, nbytes)`` returns the array the runtime handed out that holds
    ``[address, address + nbytes)``, or None.
    """
    table, n_tensors, chunk = args[0], int(args[1]), int(args[2])
    grads_only = _grads_only(name)
    if grads_only is None:
        param, grad, state, master = _storage(name)
    else:
        grad, declared_slots = grads_only
        state = None  # no slots read
    table = np.asarray(table)
    n_work = grid[0] * grid[1] * grid[2]
    if n_tensors <= 0:
        raise ValueError(f"{name}: launched for {n_tensors} tensors")
    n_slots, rows = _layout(table.size, n_tensors, n_work)
    if n_slots is None:
        raise ValueError(f"{name}: a table of {table.size} entries does not fit {n_tensors} "
                         f"tensors and {n_work} work items (one block per work item) for any "
                         "number of state slots")
    if grads_only is not None:  # the grads are its one operand: the other rows unread
        if n_slots != declared_slots:
            raise ValueError(f"{name}: launched on a table of {n_slots} slot rows; it reads "
                             f"the sizes and work rows of one of {declared_slots}")
        dtypes = [None, grad] + [None] * n_slots
    else:
        dtypes = [param, grad] + [state] * (n_slots - (master is not None))
        if isinstance(state, str):  # a float_state slot: float32 beside the codes
            for k in _float_slots(name):
                dtypes[2 + k] = np.dtype(np.float32)
        if master is not None:
            dtypes.append(master)
    narrow = min(d.itemsize for d in dtypes if isinstance(d, np.dtype))
    if isinstance(state, str) and (chunk <= 0 or chunk % FORMATS[state].block):
        raise ValueError(f"{name}: chunk {chunk} is not a multiple of the {state} block of "
                         f"{FORMATS[state].block}; a chunk must start on a block of its tensor")
    if chunk <= 0 or chunk * narrow % VECTOR_BYTES:
        raise ValueError(f"{name}: chunk {chunk} is not a multiple of the {VECTOR_BYTES}-byte "
                         "vector width; the kernel's vector loop would start misaligned")
    addresses = table[: (2 + n_slots) * n_tensors].reshape(2 + n_slots, n_tensors)
    sizes = table[rows["sizes"]: rows["sizes"] + n_tensors]
    work = table[rows["work"]:]
    lengths = _factored_lengths(name, args, sizes, n_tensors, n_slots)
    for t in range(n_tensors):
        for k in (k for k in range(2 + n_slots) if dtypes[k] is not None):
            if lengths[k, t]:
                _check_operand(name, t, k, int(addresses[k, t]), int(lengths[k, t]),
                               dtypes[k], find_buffer)
    if len(args) >= 3 + STEP_PARAMS:  # then per-tensor scalars or a reduction's output
        _check_steps(name, n_tensors, *args[3: 3 + STEP_PARAMS])
    expected = {(t, c) for t in range(n_tensors) for c in range(-(-int(sizes[t]) // chunk))}
    got = [(int(w) >> 32, int(w) & 0xFFFFFFFF) for w in work]
    if len(got) != len(set(got)) or set(got) != expected:
        raise ValueError(f"{name}: the work items do not cover every chunk of every tensor "
                         f"exactly once ({len(got)} items, {len(expected)} chunks)")


def _factored_lengths(name: str, args, sizes, n_tensors: int, n_slots: int) -> np.ndarray:
    """(operand, tensor) element counts: each tensor's size, but for the kernels of a
    factored moment (kernels/factored.cuh) its row factor, column factor and whole moment
    as the shapes argument (after the flag ring) says: B R, B C, and n only where B = 0."""
    lengths = np.tile(np.asarray(sizes, np.int64), (2 + n_slots, 1))
    family = name.split("<", 1)[0]
    from fusedopt.algorithms.registry import REGISTRY
    factored = any(s.factored is not None and family.startswith(s.kernel)
                   for s in REGISTRY.values())
    if not factored:
        return lengths
    shapes = np.asarray(args[3 + STEP_PARAMS])
    if shapes.dtype != np.int64 or shapes.size != 4 * n_tensors + 1 or n_slots != 3:
        raise ValueError(f"{name}: a factored moment's kernel takes the shapes (int64, "
                         f"4 T + 1) after the flag ring and a table of 3 slots")
    b, r, c = (shapes[i * n_tensors: (i + 1) * n_tensors] for i in range(3))
    lengths[2], lengths[3], lengths[4] = b * r, b * c, np.where(b == 0, lengths[4], 0)
    return lengths


def _float_slots(name: str) -> tuple[int, ...]:
    """The positions among its slots of a quantized entry point's float32 ones
    (``Slot.float_state``, as its optimizer declares them for the flags of its name)."""
    family, args = name.split("<", 1)
    flags = tuple(int(a) for a in args.rstrip(">").split(",")[4:])
    from fusedopt.algorithms.registry import REGISTRY
    for spec in REGISTRY.values():
        if f"{spec.kernel}_quantized" == family and len(flags) == len(spec.flag_names):
            return tuple(k for k, sign in enumerate(spec.signed_slots(flags)) if sign is None)
    return ()


def _grads_only(name: str):
    """(grad dtype, slot rows) of a reduction of the grads alone, ``family<G, N>`` (the grad
    pre-pass: kernels/reduce.cuh), else None."""
    match = _TEMPLATE_ARGS.search(name)
    parts = [a.strip() for a in match.group(1).split(",")] if match else []
    if len(parts) != 2 or parts[0] not in STORAGE or not parts[1].isdigit():
        return None
    return np.dtype(_numpy_name(STORAGE[parts[0]])), int(parts[1])


def _storage(name: str):
    """(param, grad, state, master-slot) dtypes from an optimizer name expression
    ``family<P, G, S, MODE, ...>``."""
    match = _TEMPLATE_ARGS.search(name)
    parts = [a.strip() for a in match.group(1).split(",")] if match else []
    if len(parts) < 4 or any(p not in STORAGE for p in parts[:2]) or not parts[3].isdigit() \
            or parts[2] not in STORAGE and parts[2] not in QUANTIZED:
        raise ValueError(f"{name}: cannot tell the storage from the name expression "
                         f"(family<P, G, S, MODE, ...>); see STORAGE in {__file__}")
    param, grad = (np.dtype(_numpy_name(STORAGE[p])) for p in parts[:2])
    state = QUANTIZED.get(parts[2]) or np.dtype(_numpy_name(STORAGE[parts[2]]))
    master = MASTER_SLOT[int(parts[3])]
    if master == "param":
        return param, grad, state, param
    return param, grad, state, None if master is None else np.dtype(master)


def _numpy_name(name: str):
    if name == "bfloat16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    return name


def _check_steps(name, n_tensors, rows, control, flags) -> None:
    """The scalar rows, control block and flag ring of kernels/steps.cuh agree: the block
    has a row of base and mask per tensor, every tensor's candidate steps have a row, and
    every slot the kernel may read is in the ring."""
    control = np.asarray(control)
    header = 7
    if control.size != header + 2 * n_tensors:
        raise ValueError(f"{name}: a control block of {control.size} entries for "
                         f"{n_tensors} tensors (expected {header + 2 * n_tensors})")
    lo, n_rows, n_scalars, window, slot, first, ring = (int(v) for v in control[:header])
    if np.asarray(rows).size != n_rows * n_scalars:
        raise ValueError(f"{name}: {np.asarray(rows).size} scalars for {n_rows} rows of "
                         f"{n_scalars}")
    base = control[header: header + n_tensors]
    mask = control[header + n_tensors:]
    tops = base + np.array([bin(int(m) & ((1 << window) - 1)).count("1") for m in mask])
    if base.min() < lo or tops.max() > lo + n_rows - 1:
        raise ValueError(f"{name}: the tensors' candidate steps {int(base.min())}.."
                         f"{int(tops.max())} are not all among the rows' {lo}.."
                         f"{lo + n_rows - 1}")
    if not 0 <= window < 64 or ring < 1 or np.asarray(flags).size < ring or slot >= ring:
        raise ValueError(f"{name}: window {window}, slot {slot} or ring {ring} do not fit "
                         f"a flag ring of {np.asarray(flags).size}")


def _layout(length: int, n_tensors: int, n_work: int):
    """(state slots, row offsets) of a table of ``length`` entries, or (None, None).

    The row offsets come from fusedopt.memory.table when it provides them, so the check follows
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
    if isinstance(dtype, str):  # a quantized slot: its blocks' bytes, read from a uint8 array
        nbytes = FORMATS[dtype].nbytes(size)
        buffer = find_buffer(address, nbytes)
        if address % 4 or buffer is None or buffer.dtype != np.uint8:
            raise ValueError(f"{what}: {dtype} state of {size} elements ({nbytes} bytes at "
                             f"{address:#x}) is not a 4-byte aligned part of a uint8 array "
                             "the runtime handed out")
        return
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
