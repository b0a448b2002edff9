"""The step of an optimizer that transforms whole 2-D updates (Muon): two element passes and
a batched matrix transform between them, in place of the one element pass.

For each launch group (fusedopt/engine/launches.py):

1. the momentum pass, the backend's element loop over every tensor of the group: reads the
   grad and the slots, writes the slots and ``u``, the update to transform. Each tensor's
   ``u`` is one matrix of a stack of the tensors of its shape (made once, kept in the
   group's scratch), so the pass writes the stacks directly;
2. the transform (the algorithm's Newton-Schulz), one per stack: every product is one
   batched matmul of the array library over all the tensors of that shape
   (fusedopt/backends/matmul.py), in buffers the group keeps across steps (its
   workspace, sized to its largest stack); its result is stored back into the stack;
3. the weight pass, the backend's element loop again: reads each param and its matrix of
   the stack as the "grad", with one row of scalars per tensor (the step's, then the
   shape-dependent step size), and writes the param.

The grad pre-pass (clipping, loss scales) runs before, as for every optimizer, and its grad
scales apply in the momentum pass. Every check runs before the first pass, so a refused step
changes nothing.
"""

from __future__ import annotations

import numpy as np

from ..backends.matmul import ops_for
from ..memory.arrays import kind_of
from ..memory.group import NO_CLIP, GradClip
from ..memory.storage import Storage
from . import threads as _threads
from .reductions import signed

#: Backends with element loops the passes can run in (CUDA: the passes' own kernels,
#: fusedopt/backends/cuda/launch.py ``matrix_entries``; quantized momentum's, ``refusal``
#: saying which storages have them).
_BACKENDS = ("cpu", "unfused", "cuda")


def matrix_phase(engine, plan, positions, work, scales, cache) -> None:
    """The step of every launch of ``work`` ((launch, grads) pairs) for ``engine``'s
    optimizer, which declares ``matrix``; ``scales``: each launch's grad scales from the
    pre-pass; ``cache``: the step's scalar rows by (hyper group, decays, step)."""
    spec = engine.spec
    check_matrices(engine, plan, work)
    for (launch, grads), scale in zip(work, scales):
        row = engine._step_rows(positions, launch, None, -1, cache)
        if not isinstance(row, tuple):  # steps in doubt exist on CUDA only
            raise RuntimeError("a matrix transform needs the step known on the host")
        first = positions[0 if launch.members is None else launch.members[0]]
        t = (engine._steps[first] if engine.per_param_steps else engine._iterations) + 1
        hp = engine._hyper_at(launch.hyper, t)
        if not launch.decays:
            hp = dict(hp, weight_decay=None)
        flags = engine.hypers[launch.hyper].flags
        passes = _passes(plan.backend, launch)
        clip = GradClip(signed(engine, launch, scale), engine.clipping.limit)
        matrix = spec.matrix
        with launch.kind.launch_context(launch.device), _threads.guard(plan.backend):
            plan.backend.step(matrix.momentum, flags, row, passes.first, grads, clip=clip,
                              step=t)
            for stack in passes.stacks:
                ops = ops_for(stack, matrix.dtype(engine.convention,
                                                  kind_of(stack).dtype(stack)),
                              passes.workspace)
                x = ops.wrap(stack)
                ops.store(x, matrix.transform(ops, x, hp, engine.convention))
            rows = _tensor_rows(spec, row, hp, engine.convention, passes.shapes)
            plan.backend.step(matrix.weight, flags, rows, passes.second, passes.updates,
                              clip=NO_CLIP, step=t)


def check_matrices(engine, plan, work) -> None:
    """What the passes need of the step's backend and of every launch of ``work``."""
    spec = engine.spec
    if plan.backend.name not in _BACKENDS:
        raise ValueError(f"{spec.class_name} runs on the {', '.join(map(repr, _BACKENDS))} "
                         f"backends, not {plan.backend.name!r}: its element passes need "
                         "their kernels and its Newton-Schulz products the array library's "
                         "matmul between them. Step it on NumPy or CuPy arrays (or torch "
                         "tensors)")
    for launch, _ in work:
        _check(spec, launch)


def _check(spec, launch) -> None:
    """Every param of ``launch`` is 2-D, and kept in a storage the passes take."""
    for p in launch.group.params:
        shape = kind_of(p).shape(p)
        if len(shape) != 2:
            raise ValueError(f"{spec.class_name} steps 2-D params only (it orthogonalizes "
                             f"each update as a matrix); got a param of shape {shape}: "
                             "give biases, norms and embeddings to another optimizer "
                             "(AdamW, which keras.optimizers.Muon uses for them), or reshape "
                             "it to 2-D")
    st = launch.group.storage
    if st.mode != "plain" or not (st.state == st.param or st.quantized):
        raise ValueError(f"{spec.class_name} keeps its state in the param's dtype (or "
                         f"quantized, q8 / q4) without masters, Kahan summation or "
                         f"stochastic rounding; got a {st.param} param with {st.state} state "
                         f"in mode {st.mode!r}: pass state_dtype=None (torch), 'q8' or 'q4', "
                         "or a float32 / float64 param, and master_weights=False")


class _Passes:
    """A launch's two backend groups and its stacks of updates, one per shape and memory
    order: a tensor's update has its param's layout (the element passes pair element k of
    each operand in memory), so a transposed (Fortran-ordered) param's matrix is the
    transpose of a row of a stack of (cols, rows) matrices. ``stacks`` holds each stack as
    (count, rows, cols) matrices, a view for those; ``workspace`` the transform's buffers,
    shared by the stacks, one transformed after the other (fusedopt/backends/matmul.py)."""

    def __init__(self, backend, launch):
        group = launch.group
        by_layout: dict[tuple, list[int]] = {}
        for i, p in enumerate(group.params):
            kind = kind_of(p)
            fortran = kind.f_contiguous(p) and not kind.c_contiguous(p)
            by_layout.setdefault((kind.shape(p), fortran), []).append(i)
        self.shapes = [kind_of(p).shape(p) for p in group.params]
        self.stacks, self.updates = [], [None] * len(group.params)
        self.workspace: dict = {}
        # the updates in the state's float dtype (float32 beside quantized momentum)
        st = group.storage
        floats = Storage(st.param, st.grad, st.slot_dtype(None), st.mode)
        for (shape, fortran), members in by_layout.items():
            like = group.params[members[0]]
            stored = (len(members), *(reversed(shape) if fortran else shape))
            stack = kind_of(like).stack(like, stored, floats.state)
            self.stacks.append(stack.swapaxes(-2, -1) if fortran else stack)
            for j, i in enumerate(members):
                self.updates[i] = stack[j].T if fortran else stack[j]
        with launch.kind.launch_context(launch.device):
            # Each param, its slots, then its update u; a backend may lay quantized
            # momentum out its own way (CUDA: u in the param's row,
            # fusedopt/backends/cuda/launch.py quantized_momentum_group)
            coded = getattr(backend, "quantized_momentum_group", None)
            if group.storage.quantized and coded is not None:
                self.first = coded(group.storage, group.states, self.updates)
            else:
                self.first = backend.group(group.storage, group.params,
                                           [[*s, u] for s, u in zip(group.states, self.updates)])
            self.second = backend.group(floats, group.params, [[] for _ in group.params])


def _passes(backend, launch) -> _Passes:
    passes = launch.group.scratch.get("matrix_passes")
    if passes is None:
        passes = launch.group.scratch["matrix_passes"] = _Passes(backend, launch)
    return passes


def _tensor_rows(spec, row: tuple, hp, convention: str, shapes) -> np.ndarray:
    """(tensors, scalars) float64: the step's scalars, then each tensor's step sizes."""
    matrix = spec.matrix
    k = spec.Scalars(*row)
    rows = np.empty((len(shapes), len(row) + len(matrix.scale_names)), np.float64)
    rows[:, :len(row)] = row
    for t, shape in enumerate(shapes):
        made = matrix.scales(hp, shape, convention, k)
        rows[t, len(row):] = [made[name] for name in matrix.scale_names]
    return rows
