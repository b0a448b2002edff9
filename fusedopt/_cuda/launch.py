"""CUDA backend: one kernel launch per group (all params of one dtype), whatever their count.

Launch shape: one block per table work item (a chunk of ``config.CUDA_CHUNK`` elements of
one tensor), ``config.THREADS_PER_BLOCK`` threads. The table lives on the device and is
copied there only when the tensors it lists change.
"""

from __future__ import annotations

import numpy as np

from .. import config
from .._group import Group, make_group, step_table
from .._registry import CUDA_TYPES, DTYPES, REGISTRY
from . import runtime

name = "cuda"

#: int types of the kernel arguments that precede the scalars: table, n_tensors, chunk.
_INDEX_TYPES = (np.int32, np.int64)


def accepts(array) -> bool:
    return runtime.current().accepts(array)


def zeros(like, fill: float = 0.0):
    return runtime.current().zeros(like, fill)


def group(dtype, params, states) -> Group:
    return make_group(dtype, params, states, config.CUDA_CHUNK, runtime.current().address)


#: Kernels that are not optimizers (e.g. the benchmarks' traffic ceiling): family -> names.
EXTRA_ENTRIES: dict[str, tuple[str, ...]] = {
    # kernels/traffic.cu: one per dtype and slot count any registered optimizer can have.
    "traffic": tuple(f"traffic<{CUDA_TYPES[d]}, {ns}>" for d in DTYPES
                     for ns in range(1 + max(s.max_slots for s in REGISTRY.values()))),
}


def all_entry_points() -> dict[str, tuple[str, ...]]:
    """family -> every name expression the runtime can request from kernels/<family>.cu.

    The compile and machine-code gates build exactly these.
    """
    names: dict[str, set[str]] = {}
    for spec in REGISTRY.values():
        names.setdefault(spec.kernel, set()).update(e for _, _, e in spec.entries())
    for family, extra in EXTRA_ENTRIES.items():
        names.setdefault(family, set()).update(extra)
    return {family: tuple(sorted(n)) for family, n in sorted(names.items())}


def name_expressions(family: str) -> tuple[str, ...]:
    """Every entry point of kernels/<family>.cu, compiled together into one module."""
    return all_entry_points()[family]


def kernel(spec, dtype: str, flags):
    module = runtime.current().module(spec.kernel, name_expressions(spec.kernel))
    return module.get_function(spec.entry(dtype, flags))


def step(spec, flags, scalars, group: Group, grads) -> None:
    rt = runtime.current()
    table = step_table(group, grads, rt.address)
    if group.device_version != group.table.version:
        group.device_table = rt.to_device(table, out=group.device_table)
        group.device_version = group.table.version
    n_work = group.table.n_work
    if n_work == 0:
        return
    compute = np.dtype(group.dtype).type  # compute type == storage type for float32/float64
    n_tensors, chunk = _INDEX_TYPES
    args = (group.device_table, n_tensors(len(group.params)), chunk(group.chunk),
            *(compute(x) for x in scalars))
    kernel(spec, group.dtype, flags)((n_work,), (config.THREADS_PER_BLOCK,), args)
