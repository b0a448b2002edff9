"""CUDA backend: one kernel launch per group (all params of one dtype), whatever their count.

Launch shape: one block per table work item (a chunk of ``config.CUDA_CHUNK`` elements of
one tensor), ``config.THREADS_PER_BLOCK`` threads. The table lives on the device and is
copied there only when the tensors it lists change.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from ... import config
from ...algorithms.gradsums import GRAD_SUMS
from ...algorithms.registry import REGISTRY
from ...memory.group import NO_CLIP, GradClip, Group, make_group, step_storage, step_table
from ...memory.quant import FORMATS
from ...memory.steps import StepRows, TensorScalars, as_rows
from ...memory.storage import Storage, all_storages, default_state_dtype
from ...memory.table import rows
from . import factored, quantized, runtime

name = "cuda"

#: Loss-scaled steps are decided on the device (fusedopt/engine/engine.py, kernels/steps.cuh).
DEVICE_FLAGS = True

#: int types of the kernel arguments that precede the scalars: table, n_tensors, chunk.
_INDEX_TYPES = (np.int32, np.int64)


def accepts(array) -> bool:
    return runtime.current().accepts(array)


def group(storage, params, states, streams=None) -> Group:
    # Quantized state: chunks of whole blocks, so that every chunk starts at a block of its
    # tensor (a warp owns a block: kernels/quantized.cuh).
    chunk = config.CUDA_CHUNK
    if getattr(storage, "quantized", False):
        block = FORMATS[storage.state].block
        chunk = max(block, chunk // block * block)
    return make_group(storage, params, states, chunk, runtime.current().address,
                      streams=streams)


def refusal(spec, storage) -> str | None:
    """Why this backend has no kernel for a step of ``spec`` with ``storage`` (None: it
    has one); the engine asks before a step changes anything."""
    return quantized.refusal(spec, storage)


#: Kernels that are not optimizers (e.g. the benchmarks' traffic ceiling): family -> names.
EXTRA_ENTRIES: dict[str, tuple[str, ...]] = {
    # kernels/traffic.cu: one per storage whose grads are in the param's dtype, and slot
    # count any registered optimizer can have (stochastic rounding moves plain storage's
    # bytes, and Kahan's ceiling is measured on the CPU only).
    "traffic": tuple(f"traffic<{st.template_args()}, {ns}>" for st in all_storages()
                     if st.grad == st.param and st.mode not in ("kahan", "stochastic")
                     for ns in range(1 + max(s.max_slots for s in REGISTRY.values()))),
}


def all_entry_points() -> Mapping[str, tuple[str, ...]]:
    """family -> every name expression the runtime can request from kernels/<family>.cu.

    The compile and machine-code gates build exactly these. Built once per set of
    registered optimizers: every launch asks for its family's names (:func:`kernel`).
    """
    return _entry_points(tuple(REGISTRY))


@functools.lru_cache(maxsize=None)
def _entry_points(registered: tuple) -> Mapping[str, tuple[str, ...]]:
    names: dict[str, set[str]] = {}
    for spec in (REGISTRY[name] for name in registered if REGISTRY[name].on_cuda):
        names.setdefault(spec.kernel, set()).update(
            (*(e for _, _, e in spec.entries()), *factored.entries(spec)))
        if quantized.covers(spec):  # kernels/<family>_quantized.cu
            names.setdefault(quantized.family(spec.kernel), set()).update(
                e for _, _, e in quantized.entries(spec))
        if spec.reduce_kernel is not None:  # kernels/reduce.cuh: the phase and its combine
            names.setdefault(spec.reduce_kernel, set()).update(
                (*spec.reduce_entries(), "combine_sums"))
        if quantized.reduce_entries(spec):  # kernels/<family>_reduce_quantized.cu
            names.setdefault(quantized.family(spec.reduce_kernel), set()).update(
                quantized.reduce_entries(spec))
    for spec in (REGISTRY[name] for name in registered if REGISTRY[name].matrix is not None):
        for part in matrix_passes(spec):  # Muon: fusedopt/engine/orthogonal.py runs them
            names.setdefault(part.kernel, set()).update(matrix_entries(part))
            if quantized.covers(part):  # its momentum over codes, u in the param's row
                names.setdefault(quantized.family(part.kernel), set()).update(
                    e for _, _, e in quantized.entries(part))
    # kernels/gradsums_reduce.cu: the grad pre-pass (fusedopt/algorithms/gradsums.py), its
    # combine, and the loss scale's flag from its sums.
    names.setdefault(GRAD_SUMS.reduce_kernel, set()).update(
        (*GRAD_SUMS.reduce_entries(), "combine_sums", "raise_flag"))
    for family, extra in EXTRA_ENTRIES.items():
        names.setdefault(family, set()).update(extra)
    return MappingProxyType({family: tuple(sorted(n)) for family, n in sorted(names.items())})


def matrix_passes(spec) -> tuple:
    """The element passes of an optimizer that transforms whole matrices (Muon's momentum
    and weight passes), each with kernels of its own family; none for another."""
    return () if spec.matrix is None else (spec.matrix.momentum, spec.matrix.weight)


def matrix_entries(part) -> list[str]:
    """Every float entry point of a matrix pass: plain storage of the param's dtype (and
    beside quantized momentum, float32 params' float32 state: the same entries); the
    quantized momentum pass has its own family (:func:`quantized_momentum_group`)."""
    return [name for st, _, name in part.entries() if st == Storage(st.param, st.param,
                                                                       st.param)]


def quantized_momentum_group(storage, states, updates) -> Group:
    """The group of a matrix transform's momentum pass over quantized state
    (fusedopt/engine/orthogonal.py lays out the float one): each update ``u`` in its param's
    row and the codes alone in the slot rows (kernels/muon_momentum_quantized.cu: the pass
    never reads or changes the param, and kernels/quantized.cuh codes every slot)."""
    return group(storage, updates, states)


def sampled_storages() -> list:
    """A sample of the storages that reaches every mode and param dtype: each param dtype
    in its default storage, and every mode once, on bfloat16 params and grads with float32
    state. The gates that would otherwise repeat one check per storage (the second
    architecture's compile, the sanitizers) take these (and of quantized state,
    ``quantized.sampled_storages``)."""
    return [st for st in all_storages()
            if st == Storage(st.param, st.param, default_state_dtype(st.param))
            or (st.param, st.grad, st.state) == ("bfloat16", "bfloat16", "float32")]


def storage_args(name: str) -> str:
    """The storage part of a name expression (``adam<float, float, float, 0, 1, 0>`` ->
    ``float, float, float, 0``); empty for an entry without one (``lane_sums``)."""
    args = name.split("<", 1)[1].rstrip(">").split(", ") if "<" in name else []
    return ", ".join(args[:4]) if len(args) >= 4 else ""


def sampled_entry_points() -> Mapping[str, tuple[str, ...]]:
    """family -> the entry points of :func:`sampled_storages`, and every entry point
    without a storage."""
    return _sampled_entry_points(tuple(REGISTRY))


@functools.lru_cache(maxsize=None)
def _sampled_entry_points(registered: tuple) -> Mapping[str, tuple[str, ...]]:
    sampled = {st.template_args() for st in (
        *sampled_storages(), *(st for kernel in quantized.FAMILIES
                               for st in quantized.sampled_storages(kernel)))} | {""}
    return MappingProxyType({family: tuple(n for n in names if storage_args(n) in sampled)
                             for family, names in _entry_points(registered).items()})


def name_expressions(family: str) -> tuple[str, ...]:
    """Every entry point of kernels/<family>.cu, compiled together into one module."""
    return all_entry_points()[family]


def kernel(spec, storage, flags):
    family, name = spec.kernel, spec.entry(storage, flags)
    if storage.quantized:
        family, name = quantized.family(spec.kernel), quantized.entry(spec, storage, flags)
    module = runtime.current().module(family, name_expressions(family))
    return module.get_function(name)


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


def flag_ring(size: int):
    """The device ring of step flags (int32, zero) of an engine's loss-scaled steps."""
    return runtime.current().zeros(np.zeros(size, np.int32))


def raise_flag(finite_sums, flags, slot: int, or_in: bool = False) -> None:
    """``flags[slot]`` = whether any of ``finite_sums`` (a launch group's sums of g - g
    from the grad pre-pass, one per tensor: NaN where a grad holds an inf or NaN) is NaN,
    or'ed into the flag a previous group of the same step wrote, with ``or_in``. One
    thread on the device; the host reads nothing."""
    rt = runtime.current()
    index, wide = _INDEX_TYPES
    family = GRAD_SUMS.reduce_kernel
    module = rt.module(family, name_expressions(family))
    module.get_function("raise_flag")(
        (1,), (1,), (index(finite_sums.size), finite_sums, flags, wide(slot),
                     index(int(or_in))))


def copy_flag(found_inf, flags, slot: int) -> None:
    """``flags[slot]`` = (``found_inf`` != 0), for a caller's device flag (torch's
    GradScaler's ``found_inf``), on the device."""
    runtime.current().set_flag(flags, slot, found_inf)


def read_later(array):
    """A read of device ``array`` started now and finished when the host asks
    (``done()`` without waiting, ``result()`` waiting if it must)."""
    return runtime.current().read_later(array)


def _upload(group: Group, key: str, host: np.ndarray, rt):
    """``host`` on the device in the group's buffer ``key``, copied only when it changed."""
    last = group.scratch.get(key + "_host")
    if last is None or last.shape != host.shape or not np.array_equal(last, host):
        group.scratch[key] = rt.to_device(host, out=group.scratch.get(key))
        group.scratch[key + "_host"] = host
    return group.scratch[key]


def _clipped_table(group: Group, grads, clip: GradClip, rt):
    """The group's device table with this step's grad scales and limit in it."""
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
    return table


def _step_args(group: Group, steps, storage, step: int, rt) -> tuple:
    """The table, tensor count, chunk, scalar rows, control block and flag ring of a
    launch over ``group`` (the optimizer kernel's and the reduction kernel's first six
    parameters), uploaded where they changed."""
    # The known step matters to the kernel only as a key of stochastic rounding (else the
    # control block stays the same from step to step and is not copied again).
    steps = as_rows(steps, len(group.params), step if storage.mode == "stochastic" else 1)
    scalars = _upload(group, "rows", steps.row_array(np.dtype(storage.compute)), rt)
    control = _upload(group, "control", steps.control(), rt)
    ring = steps.flags
    if ring is None:
        if "no_flags" not in group.scratch:
            group.scratch["no_flags"] = rt.zeros(np.zeros(1, np.int32))
        ring = group.scratch["no_flags"]
    n_tensors, chunk = _INDEX_TYPES
    return (group.device_table, n_tensors(len(group.params)), chunk(group.chunk), scalars,
            control, ring)


def step(spec, flags, steps, group: Group, grads, clip: GradClip = NO_CLIP,
         step: int = 1) -> None:
    """One launch over ``group``: the scalar rows and control block of ``steps``
    (fusedopt/memory/steps.py) go to the device with it, without waiting for anything (each
    tensor's step, the key of stochastic rounding's bits, is read from the control block
    on the device: ``step`` is the known step of a plain tuple of scalars). For an
    optimizer with per-tensor reductions ``steps`` is a :class:`TensorScalars`: the step's
    row, and the device array of per-tensor scalars the kernel reads beside it."""
    rt = runtime.current()
    _clipped_table(group, grads, clip, rt)
    n_work = group.table.n_work
    if n_work == 0:
        return
    storage = step_storage(group, grads)
    extra = ()
    if isinstance(steps, np.ndarray):  # a row per tensor (Muon's weight pass)
        steps = _row_per_tensor(steps, storage)
    if isinstance(steps, TensorScalars):
        steps, extra = steps.row, (steps.values,)
    args = _step_args(group, steps, storage, step, rt) + _factored(spec, group) + extra
    threads = config.THREADS_PER_BLOCK
    if storage.quantized:  # whole warps, one per block of codes; then the slots' maps
        threads = max(quantized.WARP, threads // quantized.WARP * quantized.WARP)
        tables = quantized.map_tables(storage.state, spec.signed_slots(flags))
        args += (_upload(group, "maps", tables, rt),)
    kernel(spec, storage, flags)((n_work,), (threads,), args)


def _row_per_tensor(rows: np.ndarray, storage) -> StepRows:
    """(tensors, scalars) rows as the control block's rows, tensor t reading row t (its
    "step" t + 1 in kernels/steps.cuh: only stochastic rounding reads a step, and such a
    launch never has a row per tensor)."""
    if storage.mode == "stochastic":
        raise ValueError("a row of scalars per tensor cannot key stochastic rounding's bits")
    n = rows.shape[0]
    return StepRows(1, tuple(map(tuple, rows.tolist())), tuple(range(1, n + 1)), (0,) * n)


def _factored(spec, group: Group) -> tuple:
    """A factored moment's operands after the table's six arguments (shapes, denominators:
    fusedopt/backends/cuda/factored.py); none for another optimizer."""
    return () if spec.factored is None else factored.operands(group)


def factor(spec, flags, row: tuple, group: Group, grads, clip: GradClip = NO_CLIP) -> None:
    """The factor phase of ``spec``'s factored moment over ``group`` (kernels/factored.cuh):
    each factor moved with the grads as the step sees them (``clip``), each slice's
    denominator kept in the group's scratch, on the device; ``row`` the step's scalars."""
    rt = runtime.current()
    _clipped_table(group, grads, clip, rt)
    storage = step_storage(group, grads)
    args = _step_args(group, row, storage, 1, rt)
    module = rt.module(spec.kernel, name_expressions(spec.kernel))
    factored.factor(spec, flags, row, group, args, storage, rt, module,
                    lambda key, host: _upload(group, key, host, rt))


def reduce(spec, flags, row: tuple, group: Group, grads, clip: GradClip = NO_CLIP):
    """(terms, tensors) float64 device array: each tensor's sums of ``spec``'s reduction
    terms (kernels/<family>_reduce.cu, kernels/reduce.cuh), each grad seen as the step
    will see it (``clip``), the state before the step; ``row`` the step's scalars. Two
    launches (the block sums, then their combine in a fixed order), nothing read back.
    For the grad pre-pass (``grads_as_stored``: fusedopt/algorithms/gradsums.py) the
    kernel reads the grads alone, as stored: ``clip`` and ``row`` are not used and the
    table's clip rows stay as they are."""
    rt = runtime.current()
    stored = spec.reductions.grads_as_stored
    if stored:
        _device_table(group, grads, rt)
    else:
        _clipped_table(group, grads, clip, rt)
    n_tensors, n_work = len(group.params), group.table.n_work
    n_terms = len(spec.reductions.names)
    key = "grad_sums" if stored else "reduce"  # a step may run both: buffers of their own
    sizes = (n_terms * max(n_work, 1), n_terms * n_tensors)
    if group.scratch.get(key + "_sizes") != sizes:  # every entry is written before it is read
        group.scratch[key] = [rt.zeros(np.empty(n, np.float64)) for n in sizes]
        group.scratch[key + "_sizes"] = sizes
    partial, sums = group.scratch[key]
    storage = step_storage(group, grads)
    family = spec.reduce_kernel
    if storage.quantized and not stored:  # the codes' kernels (kernels/quantized_reduce.cuh)
        family = quantized.family(spec.reduce_kernel)
    module = rt.module(family, name_expressions(family))
    threads = config.THREADS_PER_BLOCK
    index, wide = _INDEX_TYPES
    if n_work:
        if stored:
            entry = spec.stored_entry(storage.grad, group.n_slots)
            args = (group.device_table, index(n_tensors), wide(group.chunk), partial)
        else:
            entry = spec.reduce_entry(storage, flags)
            args = _step_args(group, row, storage, 1, rt) + _factored(spec, group) + (partial,)
            if storage.quantized:  # then the slots' maps, as the quantized step takes them
                entry = quantized.reduce_entry(spec, storage, flags)
                tables = quantized.map_tables(storage.state, spec.signed_slots(flags))
                args += (_upload(group, "maps", tables, rt),)
        module.get_function(entry)((n_work,), (threads,), args)
    work = group.device_table[rows(group.n_slots, n_tensors)["work"]:]
    module.get_function("combine_sums")(
        (-(-n_terms * n_tensors // threads),), (threads,),
        (work, wide(n_work), index(n_tensors), index(n_terms), partial, sums))
    return sums.reshape(n_terms, n_tensors)


def tensor_scalars(spec, row: tuple, sums, group: Group):
    """(per-tensor scalars, tensors) float64 device array made from :func:`reduce`'s
    ``sums`` by the optimizer's declared formulas (``Reductions.scalars``), run as array
    operations on the device: the element kernel reads it, the host reads nothing."""
    rt = runtime.current()
    sizes = group.scratch.get("reduce_tensor_sizes")
    if sizes is None:
        sizes = group.scratch["reduce_tensor_sizes"] = rt.to_device(
            group.sizes.astype(np.float64))
    made = spec.tensor_scalars(rt.xp, row, sums, sizes)
    return rt.xp.stack([rt.xp.broadcast_to(values, sizes.shape) for values in made])
