"""CUDA backend: one kernel launch per group (all params of one dtype), whatever their count.

Launch shape: one block per table work item (a chunk of ``config.CUDA_CHUNK`` elements of
one tensor), ``config.THREADS_PER_BLOCK`` threads. The table lives on the device and is
copied there only when the tensors it lists change.
"""

from __future__ import annotations

import numpy as np

from .. import config
from .._clip import NO_CLIP, GradClip
from .._group import Group, make_group, step_table
from .._registry import CUDA_TYPES, DTYPES, REGISTRY
from .._table import rows
from . import runtime

name = "cuda"

#: int types of the kernel arguments that precede the scalars: table, n_tensors, chunk.
_INDEX_TYPES = (np.int32, np.int64)


def accepts(array) -> bool:
    return runtime.current().accepts(array)


def group(dtype, params, states) -> Group:
    return make_group(dtype, params, states, config.CUDA_CHUNK, runtime.current().address)


#: Kernels that are not optimizers (e.g. the benchmarks' traffic ceiling): family -> names.
EXTRA_ENTRIES: dict[str, tuple[str, ...]] = {
    # kernels/traffic.cu: one per dtype and slot count any registered optimizer can have.
    "traffic": tuple(f"traffic<{CUDA_TYPES[d]}, {ns}>" for d in DTYPES
                     for ns in range(1 + max(s.max_slots for s in REGISTRY.values()))),
    # kernels/norm.cu: per-tensor sums of squares of the grads, for clipping by norm.
    "norm": (*(f"chunk_sums<{CUDA_TYPES[d]}>" for d in DTYPES), "lane_sums", "tensor_sums"),
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


def _device_table(group: Group, grads, rt):
    """The group's launch table on the device: copied there whole once, then only the rows
    that changed (the grad addresses, when new grad tensors came)."""
    table = step_table(group, grads, rt.address)
    if group.device_version != group.table.version:
        changed = (group.table.changes_since(group.device_version)
                   if group.device_table is not None else None)
        if changed is None:
            group.device_table = rt.to_device(table, out=group.device_table)
        else:
            for rows in changed:
                rt.to_device(table[rows], out=group.device_table[rows])
        group.device_version = group.table.version
    return group.device_table


def sum_squares(group: Group, grads):
    """Sum of g**2 of each grad (a float64 device array), for clipping by norm.

    Three launches of kernels/norm.cu, no atomics and no cooperation between threads:
    per-thread sums of each chunk, then per-tensor sums of each thread lane over the
    tensor's chunks, then one sum per tensor. Nothing is copied to the host.
    """
    rt = runtime.current()
    table = _device_table(group, grads, rt)
    n_tensors, n_work = len(group.params), group.table.n_work
    threads = config.THREADS_PER_BLOCK
    sizes = (max(n_work, 1) * threads, n_tensors * threads, n_tensors)
    if group.scratch.get("norm_sizes") != sizes:  # every entry is written before it is read
        group.scratch["norm"] = [rt.zeros(np.empty(n, np.float64)) for n in sizes]
        group.scratch["norm_sizes"] = sizes
    partial, lanes, out = group.scratch["norm"]
    module = rt.module("norm", name_expressions("norm"))
    index, wide = _INDEX_TYPES
    if n_work:
        module.get_function(f"chunk_sums<{CUDA_TYPES[group.dtype]}>")(
            (n_work,), (threads,),
            (table, index(n_tensors), index(group.n_slots), wide(group.chunk), partial))
    module.get_function("lane_sums")(
        (n_tensors,), (threads,),
        (table, index(n_tensors), index(group.n_slots), wide(n_work), partial, lanes))
    module.get_function("tensor_sums")(
        (-(-n_tensors // threads),), (threads,), (index(n_tensors), index(threads), lanes, out))
    return out


def step(spec, flags, scalars, group: Group, grads, clip: GradClip = NO_CLIP) -> None:
    rt = runtime.current()
    group.table.set_limit(clip.limit)
    if group.grads_scaled and clip.scales is None:
        group.device_version = -1  # the device row holds old scales: copy the 1.0s back
        group.grads_scaled = False
    table = _device_table(group, grads, rt)
    if clip.scales is not None:
        # Written on the device from device scales: the step never waits for the host.
        start = rows(group.n_slots, len(group.params))["scales"]
        scales = clip.scales
        bits = (np.float64(scales).view(np.int64) if isinstance(scales, float)
                else scales.view(np.int64))
        table[start: start + len(group.params)] = bits
        group.grads_scaled = True
    n_work = group.table.n_work
    if n_work == 0:
        return
    compute = np.dtype(group.dtype).type  # compute type == storage type for float32/float64
    n_tensors, chunk = _INDEX_TYPES
    args = (group.device_table, n_tensors(len(group.params)), chunk(group.chunk),
            *(compute(x) for x in scalars))
    kernel(spec, group.dtype, flags)((n_work,), (config.THREADS_PER_BLOCK,), args)
