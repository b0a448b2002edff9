"""Factored second moments on CUDA (Adafactor: ``factored`` in fusedopt/algorithms/spec.py):
the factor phase and the operands the reduction and element kernels read beside the launch
table (kernels/factored.cuh says the kernels).

The factor phase is two launches over the group's table, one block per work item: the
first sums each row and column of ``square`` of the clipped grads and moves its factor in
place; the second takes the mean of each slice's new row factors, in double. Each slice's
denominator is then made from those means by the algorithm's own array formula
(``Factored.denominator``) on the device, as the per-tensor scalars of a reduction are
(fusedopt/backends/cuda/launch.py): the host reads nothing. The shapes of the group's
tensors go to the device once, with the table.

Storage: grads and state in the param's dtype (float32 or float64), plain, as on the CPU
(fusedopt/backends/cpu/factored.py); the engine says so before a step.
"""

from __future__ import annotations

import numpy as np

from ... import config
from ...memory import factored as _factored
from ...memory.arrays import kind_of


def _shapes(group) -> np.ndarray:
    """int64 rows of ``T`` (kernels/factored.cuh): B, R, C of each tensor (B = 0 for rank
    < 2) and its first slice among the group's, then the group's slice count."""
    n = len(group.params)
    out = np.zeros(4 * n + 1, np.int64)
    first = 0
    for t, p in enumerate(group.params):
        shape = tuple(kind_of(p).shape(p))
        if _factored.is_factored(shape):
            out[t], out[n + t], out[2 * n + t] = _factored.slices(shape)
        out[3 * n + t] = first
        first += int(out[t])
    out[4 * n] = first
    return out


def shapes(group, upload):
    """The group's shapes on the device (``upload(key, host)``: copied when they change)."""
    host = group.scratch.get("factor_shapes_host")
    if host is None:
        host = _shapes(group)
    return upload("factor_shapes", host)


def factor(spec, flags, row: tuple, group, args: tuple, st, rt, module, upload) -> None:
    """Move the row and column factors of every factored tensor of ``group`` and keep each
    slice's denominator (a device array of the compute type) in the group's scratch.
    ``args``: the launch's first six arguments (table to flag ring)."""
    _factored.check_storage(st)
    device_shapes = shapes(group, upload)
    n_slices = int(group.scratch["factor_shapes_host"][-1])
    threads, n_work = config.THREADS_PER_BLOCK, group.table.n_work
    if group.scratch.get("factor_means_size") != n_slices:
        group.scratch["factor_means"] = rt.zeros(np.zeros(max(n_slices, 1), np.float64))
        group.scratch["factor_means_size"] = n_slices
    means = group.scratch["factor_means"]
    if n_work:
        suffix = spec.entry(st, flags)[len(spec.kernel):]
        module.get_function(f"{spec.kernel}_factor{suffix}")(
            (n_work,), (threads,), (*args, device_shapes))
        module.get_function(f"{spec.kernel}_means{suffix}")(
            (n_work,), (threads,), (*args, device_shapes, means))
    k64 = spec.Scalars(*map(float, row), *(0.0 for _ in spec.reductions.scalar_names))
    made = spec.factored.denominator(rt.xp, means, k64, spec.named_flags(flags))
    group.scratch["factor_denominators"] = rt.xp.asarray(made).astype(np.dtype(st.compute))


def operands(group) -> tuple:
    """What the reduction and element kernels of a factored moment read after the table's
    six arguments: the shapes and the slices' denominators (of this step's factor phase)."""
    return group.scratch["factor_shapes"], group.scratch["factor_denominators"]


def entries(spec) -> list[str]:
    """The factor phase's entry points of ``spec``'s family (none without a factored
    moment): ``<kernel>_factor`` and ``<kernel>_means``, with the element pass's template
    arguments."""
    if spec.factored is None:
        return []
    return [f"{spec.kernel}{part}{name[len(spec.kernel):]}" for _, _, name in spec.entries()
            for part in ("_factor", "_means")]
