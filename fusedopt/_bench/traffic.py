"""Bytes an optimizer step moves, and the kernels that move exactly those bytes.

Per element a fused step reads the param, the grad and every state slot and writes the
param and every slot back, so

    read_bytes  = 2 * param_bytes + n_slots * state_bytes
    write_bytes =     param_bytes + n_slots * state_bytes
    bytes       = n * (read_bytes + write_bytes)

(fp32 Adam: read 16, write 12, 28 bytes per element). The traffic ceiling is a kernel that
walks the same launch table with the same slot count and does trivial math (``theta += a g``,
``s_k += a g`` with a = 0), so a fused step's time over the ceiling's is the cost of its math.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .._registry import CUDA_TYPES

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
    """The dtype state slots are kept in for ``dtype`` params: the engine's default where it
    declares one (fusedopt._storage, for 16-bit storage), else the param's own dtype (state
    is kept in the compute type, which is the storage type for float32/64)."""
    try:
        from .._storage import default_state_dtype
    except ImportError:
        return dtype
    return str(default_state_dtype(dtype))


def traffic(spec, flags, dtype: str) -> Traffic:
    """Bytes per element of one step of ``spec``'s variant ``flags`` on ``dtype`` params."""
    param = itemsize(dtype)
    state = itemsize(state_dtype(dtype))
    n_slots = len(spec.slots(flags))
    return Traffic(read_bytes=2 * param + n_slots * state,
                   write_bytes=param + n_slots * state)


# --- CPU ceiling: a rule for fusedopt._cpu.loop.run -------------------------------------------

@njit(inline="always", error_model="numpy")
def ceiling_rule(i, p, g, s0, s1, s2, h, flags):
    """Reads p, g and the first ``flags[0]`` slots, writes p and those slots."""
    n_slots = flags[0]
    step = h[0] * g[i]
    p[i] = p[i] + step
    if n_slots > 0:
        s0[i] = s0[i] + step
    if n_slots > 1:
        s1[i] = s1[i] + step
    if n_slots > 2:
        s2[i] = s2[i] + step


def cpu_ceiling(param, grad, slots, scale: float = CEILING_SCALE):
    """A no-argument step running :func:`ceiling_rule` through the CPU backend's loop, with
    the backend's choice of loop: the serial one for a table of one work item (as a fused
    step of that size runs), the parallel one otherwise."""
    from .._cpu import backend
    from .._cpu.loop import run, run_serial, specialize
    from .._group import step_table

    group = backend.group(str(param.dtype), [param], [list(slots)])
    table = step_table(group, [grad], backend.address)
    like = np.empty(0, param.dtype)
    h = (param.dtype.type(scale),)
    rule = specialize(ceiling_rule, (len(slots),))  # slot count frozen: no guarded stores
    loop = run if group.table.n_work > 1 else run_serial

    def step():
        loop(rule, table, 1, group.n_slots, group.chunk, like, like, h)
    step.arrays = (param, grad, slots)  # the table holds raw addresses: keep them alive
    return step


# --- GPU ceiling: kernels/traffic.cu through the CUDA backend's runtime ---------------------

def cuda_ceiling(param, grad, slots, scale: float = CEILING_SCALE):
    """A no-argument step launching ``traffic<T, NS>`` over the same table shape as a fused step."""
    from .. import config
    from .._cuda import launch, runtime
    from .._group import step_table

    rt = runtime.current()
    dtype = str(param.dtype)
    group = launch.group(dtype, [param], [list(slots)])
    table = rt.to_device(step_table(group, [grad], rt.address))
    module = rt.module("traffic", launch.name_expressions("traffic"))
    kernel = module.get_function(f"traffic<{CUDA_TYPES[dtype]}, {len(slots)}>")
    args = (table, np.int32(1), np.int64(group.chunk), param.dtype.type(scale))
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
