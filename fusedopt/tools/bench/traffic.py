"""Bytes an optimizer step moves, and the kernels that move exactly those bytes.

Per element a fused step reads the param, the grad, every state slot and the master slot
(if the storage has one: fusedopt/memory/storage.py) and writes all of them back but the grad,
except that with an fp32 master the 16-bit param is only written (the master is read
instead), so

    read_bytes  = param_read + grad_bytes + n_slots * state_bytes + master_bytes
    write_bytes = param_bytes             + n_slots * state_bytes + master_bytes
    bytes       = n * (read_bytes + write_bytes)

with param_read = 0 for an fp32 master, param_bytes otherwise (fp32 Adam: read 16, write
12, 28 bytes per element; bf16 params and grads with fp32 m, v: 12 + 10 = 22; with an fp32
master, 14 + 14 = 28; with an int16 remainder instead, 14 + 12 = 26). The traffic
ceiling is a kernel that walks the same launch table with the same slots and storage,
through the same loop and load/store helpers, and does trivial math (``theta += a g``,
``s_k += a g`` with a = 0), so a fused step's time over the ceiling's is the cost of its
math.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numpy as np
from numba import njit

from ...memory.group import as_storage
from ...memory.storage import Storage

#: The scalar of the ceiling's rule: zero keeps the values fixed; the kernels cannot know it.
CEILING_SCALE = 0.0


@dataclass(frozen=True)
class Traffic:
    """Bytes one element of a step reads and writes."""

    read_bytes: int
    write_bytes: int

    def total(self, n: int) -> int:
        """``bytes = n * (read_bytes + write_bytes)`` for a tensor of ``n`` elements."""
        return n * (self.read_bytes + self.write_bytes)


def itemsize(dtype: str) -> int:
    """Bytes of one element of ``dtype``; 16-bit floats NumPy lacks come from ml_dtypes."""
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        import ml_dtypes  # registers bfloat16 and friends with NumPy
        return np.dtype(getattr(ml_dtypes, dtype)).itemsize


def state_dtype(dtype: str) -> str:
    """The dtype state slots are kept in by default for ``dtype`` params (fusedopt.memory.storage)."""
    from ...memory.storage import default_state_dtype
    return str(default_state_dtype(dtype))


def traffic(spec, flags, storage: Storage | str) -> Traffic:
    """Bytes per element of one step of ``spec``'s variant ``flags`` on ``storage`` (a
    dtype name: its default storage)."""
    st = as_storage(storage)
    param, grad, state = (itemsize(d) for d in (st.param, st.grad, st.state))
    master = itemsize(st.master[1]) if st.master else 0
    param_read = 0 if st.mode == "master" else param
    n_slots = len(spec.slots(flags))
    return Traffic(read_bytes=param_read + grad + n_slots * state + master,
                   write_bytes=param + n_slots * state + master)


# --- CPU ceiling: a rule for fusedopt.backends.cpu.loop.run -------------------------------------------

#: The ceiling rule's one scalar, by name.
CeilingScalars = namedtuple("CeilingScalars", ["scale"])


@njit(inline="always", error_model="numpy")
def ceiling_rule(p, g, s0, s1, s2, s3, zero, k):
    """Every value plus a g (the loop loads and stores param, grad and every slot it has)."""
    step = k.scale * g
    return p + step, s0 + step, s1 + step, s2 + step, s3 + step


def cpu_ceiling(param, grad, slots, scale: float = CEILING_SCALE, storage=None):
    """A no-argument step running :func:`ceiling_rule` through the CPU backend's loop, over
    ``slots`` (the master slot last, when ``storage`` has one)."""
    from ...backends.cpu import backend
    from ...backends.cpu import storage as codes
    from ...backends.cpu import threads
    from ...backends.cpu.loop import MODE_CODES, Variant, run, run_serial
    from ...memory.group import step_table

    st = as_storage(str(param.dtype) if storage is None else storage)
    group = backend.group(st, [param], [list(slots)])
    table = step_table(group, [grad], backend.address)
    n_slots = len(slots) - (st.master is not None)
    # No clamp: the ceiling never clips, and neither does the fused step it is set beside.
    variant = Variant(ceiling_rule, CeilingScalars, (n_slots,), n_slots,
                         tuple(codes.CODES[d] for d in (st.param, st.grad, st.state)),
                         MODE_CODES[st.mode], clamps=False)
    h = (float(scale),)
    # The backend's own choice (fusedopt/backends/cpu/threads.py): a step of one work item
    # or few elements runs on the calling thread, as the fused step beside it does.
    loop = run if threads.step_threads(int(group.sizes.sum()), group.table.n_work) > 1 \
        else run_serial

    def step():
        loop(variant, table, 1, group.chunk, h, np.int64(1))
    step.arrays = (param, grad, slots)  # the table holds raw addresses: keep them alive
    return step


# --- GPU ceiling: kernels/traffic.cu through the CUDA backend's runtime ---------------------

def cuda_ceiling(param, grad, slots, scale: float = CEILING_SCALE, storage=None):
    """A no-argument step launching ``traffic<P, G, S, MODE, NS>`` over the same table shape
    and storage as a fused step."""
    from ... import config
    from ...backends.cuda import launch, runtime
    from ...memory.group import step_table
    from ...memory.steps import step_rows

    rt = runtime.current()
    st = as_storage(str(param.dtype) if storage is None else storage)
    group = launch.group(st, [param], [list(slots)])
    table = rt.to_device(step_table(group, [grad], rt.address))
    module = rt.module("traffic", launch.name_expressions("traffic"))
    n_slots = len(slots) - (st.master is not None)
    kernel = module.get_function(f"traffic<{st.template_args()}, {n_slots}>")
    rows = step_rows(lambda t: (float(scale),), [1], [0])
    args = (table, np.int32(1), np.int64(group.chunk),
            rt.to_device(rows.row_array(np.dtype(st.compute))), rt.to_device(rows.control()),
            rt.zeros(np.zeros(1, np.int32)))
    n_work = group.table.n_work

    def step():
        kernel((n_work,), (config.THREADS_PER_BLOCK,), args)
    step.arrays = (param, grad, slots)  # the table holds raw addresses: keep them alive
    return step


def cuda_copy(n_bytes: int):
    """A device-to-device copy moving ``n_bytes`` in all (half read, half written)."""
    import cupy

    src = cupy.zeros(n_bytes // 2, dtype=cupy.uint8)
    dst = cupy.empty_like(src)

    def step():
        dst.data.copy_from_device_async(src.data, src.nbytes)  # cudaMemcpyAsync, device to device
    return step
