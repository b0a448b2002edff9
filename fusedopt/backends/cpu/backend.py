"""CPU backend: one Numba call per group, however many tensors it holds."""

from __future__ import annotations

import numpy as np

from ... import config
from ...memory.arrays import foreign, kind_of
from ...memory.group import NO_CLIP, GradClip, Group, make_group, step_storage, step_table
from ...memory.quant import FORMATS
from ...memory.steps import as_rows
from ...memory.table import float_row, rows
from . import factored, quantized, storage, threads
from . import reduce as reduce_
from .address import address
from .loop import MODE_CODES, run, run_serial, specialize

name = "cpu"

#: use_ema's moving averages are updated in the step's own pass (fusedopt/backends/cpu/loop.py),
#: from the param in registers: 8 bytes more per float32 element rather than a pass of 28.
FUSED_AVERAGE = True


def accepts(array) -> bool:
    """NumPy arrays, and host arrays of a registered kind (fusedopt/memory/arrays.py)."""
    if isinstance(array, np.ndarray):
        return True
    return foreign(array) and not kind_of(array).on_device(array)


def group(storage_, params, states, streams=None, averages=None) -> Group:
    # Packed: tiny tensors share a task, so every task is about CPU_CHUNK elements and
    # Numba's static split of tasks between threads stays even. Quantized state: chunks of
    # whole blocks, so that every span starts at a block.
    chunk = config.CPU_CHUNK
    if getattr(storage_, "quantized", False):
        block = FORMATS[storage_.state].block
        chunk = max(block, chunk // block * block)
    return make_group(storage_, params, states, chunk, address, pack=True,
                      streams=streams, averages=averages)


def factor(spec, flags, row: tuple, group: Group, grads, clip: GradClip = NO_CLIP) -> None:
    """Move the row and column factors of ``spec``'s factored moment over ``group``
    (fusedopt/backends/cpu/factored.py)."""
    factored.factor(spec, flags, row, group, grads, clip, step_storage(group, grads))


def reduce(spec, flags, row: tuple, group: Group, grads, clip: GradClip = NO_CLIP):
    """(MAX_REDUCTIONS, tensors) float64: the per-tensor sums of ``spec``'s reductions
    (fusedopt/backends/cpu/reduce.py) over ``group``, each grad seen as the step will see it
    (``clip``), the state before the step; ``row`` the step's scalars. For the grad
    pre-pass (fusedopt/algorithms/gradsums.py: the grads as stored) ``clip`` is not
    applied and the table's clip rows are left as they are."""
    if spec.factored is not None:
        return factored.reduce(spec, flags, row, group, grads, clip,
                               step_storage(group, grads))
    if spec.reductions.grads_as_stored:
        return reduce_.stored_sums(spec, flags, storage.CODES[step_storage(group, grads).grad],
                                   step_table(group, grads, address), len(group.params),
                                   group.n_slots, group.chunk)
    group.table.set_limit(clip.limit)
    table = step_table(group, grads, address)
    _set_clip(group, clip)
    st = step_storage(group, grads)
    codes = (storage.CODES[st.param], storage.CODES[st.grad], storage.CODES[st.state])
    compute = np.float64 if st.param == "float64" else np.float32
    k = spec.Scalars(*(compute(x) for x in row),
                     *(compute(0) for _ in spec.reductions.scalar_names))
    return reduce_.tensor_sums(spec, tuple(flags), codes, MODE_CODES[st.mode], table,
                               len(group.params), group.n_slots, group.chunk, k)


def _set_clip(group: Group, clip: GradClip) -> None:
    """Write this step's grad scales into the table the loop reads (1.0 when none)."""
    if clip.scales is None and not group.grads_scaled:  # the row holds 1.0s already
        return
    table, n = group.table.array, len(group.params)
    start = rows(group.n_slots, n)["scales"]
    if clip.scales is not None:
        table[start: start + n] = float_row(clip.scales, n)
        group.grads_scaled = True
    else:
        table[start: start + n] = float_row(1.0, n)
        group.grads_scaled = False


def variant(spec, flags, st, clamps: bool = True, average: bool = False) -> object:
    """The loop specialization of ``spec``'s variant ``flags`` on storage ``st``, with the
    grads scaled and clamped by the table's rows or (``clamps`` False) not, and with or
    without a moving average slot."""
    codes = (storage.CODES[st.param], storage.CODES[st.grad], storage.CODES[st.state])
    return specialize(spec, tuple(flags), codes, MODE_CODES[st.mode], clamps, average)


def step(spec, flags, steps, group: Group, grads, clip: GradClip = NO_CLIP,
         step: int = 1, average: tuple | None = None) -> None:
    """One step of ``group``; ``steps`` (fusedopt/memory/steps.py) must be certain on the CPU:
    one scalar row (or a 2-D float64 array of a row per tensor, from per-tensor reductions),
    the step known (``step``, 1-based: a key of stochastic rounding).
    ``average``: ``(momentum, 1 - momentum)`` of this step's moving-average update, for a
    group made with averages (and only for one)."""
    if (average is not None) != group.averaged:
        raise ValueError("a group made with moving averages steps with their momentum, "
                         "and only such a group")
    if spec.factored is not None:
        factored.step(spec, flags, steps, group, grads, clip, step_storage(group, grads),
                      average)
        return
    launcher(spec, flags, group, grads, clip)(grads, steps, step, clip, average)


def launcher(spec, flags, group: Group, grads, clip: GradClip = NO_CLIP) -> "Launcher":
    """The :class:`Launcher` of ``spec``'s variant ``flags`` over ``group`` for grads of
    this dtype and this ``clip`` (made the first time, then kept in the group). Not for
    factored moments (fusedopt/backends/cpu/factored.py)."""
    # A step that neither clips nor scales its grads runs the variant without the clamp
    # (compiled the first time a group needs it: the other is compiled only if asked for).
    # Found by the grads' own dtype object, as step_storage finds their storage.
    key = (spec.name, flags, getattr(grads[0], "dtype", None) if grads else None,
           clip.active)
    found = group.scratch.get(key)
    if found is None:
        found = group.scratch[key] = Launcher(spec, flags, group, clip.active)
    return found


class Launcher:
    """A group's step with one variant, grads' dtype and kind of clip (a step that clips or
    scales its grads or not): the table's clip rows and grads written, then one loop call.
    :func:`step` runs every non-factored step through one; an engine may keep one and call
    it again (fusedopt/engine/plain.py)."""

    __slots__ = ("spec", "flags", "group", "clamps", "chosen")

    def __init__(self, spec, flags, group: Group, clamps: bool):
        self.spec, self.flags, self.group, self.clamps = spec, flags, group, clamps
        self.chosen = None  # the variant, compiled at the first step with work

    def __call__(self, grads, steps, step: int, clip: GradClip = NO_CLIP,
                 average: tuple | None = None) -> None:
        """:func:`step`'s step with ``grads`` of the dtype this launcher was found for and a
        ``clip`` of its kind."""
        group = self.group
        group.table.set_limit(clip.limit)
        table = step_table(group, grads, address)
        _set_clip(group, clip)
        n_work = group.table.n_work
        if n_work == 0:
            return
        chosen = self.chosen
        if chosen is None:
            chosen = self.chosen = variant(self.spec, self.flags, step_storage(group, grads),
                                           self.clamps, group.averaged)
        # A step of one task, few elements or one thread runs here, without waking the pool.
        loop = run_serial
        if n_work > 1:
            elements = group.scratch.get("elements")
            if elements is None:
                elements = group.scratch["elements"] = int(group.sizes.sum())
            loop = run if threads.step_threads(elements, n_work) > 1 else run_serial
        if isinstance(steps, np.ndarray):  # a row per tensor (per-tensor reductions)
            scalars = steps
            if average is not None:
                scalars = np.hstack([steps, np.tile(np.asarray(average, np.float64),
                                                     (steps.shape[0], 1))])
        else:
            scalars = (steps if isinstance(steps, tuple)
                       else as_rows(steps, len(group.params)).scalars())
            if average is not None:
                scalars = tuple(scalars) + tuple(average)
        spans = quantized.span_function if chosen.quantized else None
        loop(chosen, table, group.table.n_tensors, group.chunk, scalars, np.int64(step), spans)
