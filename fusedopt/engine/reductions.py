"""The step's reduction phase: per-tensor sums that the element pass needs before it runs.

An elementwise optimizer reads one element at a time. Some need a number of the whole
tensor first - LAMB its trust ratio ||p|| / ||update||, StableAdamW the RMS of g^2 / v -
and declare it (``reductions`` in fusedopt/algorithms/spec.py): the terms summed per tensor,
a rule that gives them for one element, and how the sums become per-tensor scalars that
the element rule reads beside the step's own (``k.trust_lr``).

The phases of a step (fusedopt/engine/step.py), as they read memory:

1. the grad pre-pass, a reduction of the grads alone (each tensor's sum of g^2 and its
   inf/NaN test), only when clipping by norm or an unchecked loss scale needs it: it
   decides the grad scales every later phase applies;
2. for an optimizer with a factored second moment (Adafactor), the factor phase
   (:func:`factor_phase`): a read of the grads that moves each tensor's row and column
   factors, small arrays the later passes read by row and by column;
3. this phase, only for an optimizer that declares reductions: one read of what its rule
   reads (for LAMB and StableAdamW: param, grad and state), one launch per launch group
   (one Numba call for every tensor of a dtype), nothing written;
4. the element pass, with a row of scalars per tensor: the step's, then the per-tensor
   ones made here in float64 from float64 sums - on the host for the CPU backends; on
   the device for CUDA (the backend's ``tensor_scalars``: the same declared formulas run
   as CuPy array operations), where the element kernel reads them beside the step's row
   (:class:`~fusedopt.memory.steps.TensorScalars`) and the host reads nothing back.

Each phase needs the one before it: the grad scales change the terms (LAMB's update is
not linear in g, so a clipped grad cannot be folded in afterwards), and the terms decide
every element's update. So a step that clips by norm reads the grads three times, and one
that does not, twice; no phase writes what an earlier one read, so an inf found by the
pre-pass still leaves everything as it was. The bytes of each optimizer's passes are in
its module's docstring.
"""

from __future__ import annotations

import numpy as np

from ..memory.arrays import kind_of
from ..memory.steps import TensorScalars
from . import threads as _threads
from .clip import GradClip


def signed(engine, launch, scale):
    """The grad scale of ``launch`` with a maximizing group's -1 folded in (None: 1)."""
    if engine.hypers[launch.hyper].maximize:
        return -1.0 if scale is None else -scale
    return scale


def _refuse(spec, backend, what: str) -> None:
    raise ValueError(f"{spec.class_name}'s {what} run on the 'cpu' and 'unfused' backends; "
                     f"the {backend.name!r} backend has no kernels for them yet: pass NumPy "
                     "arrays (CPU tensors) or backend='cpu'")


def factor_phase(engine, plan, positions, work, scales, cache) -> None:
    """For an optimizer with a factored second moment (``factored`` in
    fusedopt/algorithms/spec.py): each factored tensor's row and column factors moved
    with this step's grads (one read of the grads, parallel over rows), and each slice's
    denominator kept in the backend group for the passes after it. Runs after the grad
    pre-pass (whose scales it applies) and before the reduction phase (which reads the
    new factors)."""
    spec = engine.spec
    if spec.factored is None:
        return
    factor = getattr(plan.backend, "factor", None)
    if factor is None:
        _refuse(spec, plan.backend, "factored second moments")
    for (launch, grads), scale in zip(work, scales):
        row = engine._step_rows(positions, launch, None, -1, cache)
        if not isinstance(row, tuple):
            raise RuntimeError("factored moments need the step known on the host")
        clip = GradClip(signed(engine, launch, scale), engine.clipping.limit)
        flags = engine.hypers[launch.hyper].flags
        with launch.kind.launch_context(launch.device), _threads.guard(plan.backend):
            factor(spec, flags, row, launch.group, grads, clip=clip)


def reduction_phase(engine, plan, positions, work, scales, cache) -> list:
    """Each launch's scalar rows, one per tensor (a float64 array of shape (tensors,
    scalars)), for an optimizer with reductions; None for each launch otherwise.

    ``work``: (launch, grads) of every launch; ``scales``: each launch's grad scales from
    the pre-pass; ``cache``: the step's scalar rows by (hyper group, decays, step)."""
    spec = engine.spec
    if spec.reductions is None:
        return [None] * len(work)
    reduce = getattr(plan.backend, "reduce", None)
    if reduce is None:
        raise ValueError(f"{spec.class_name}'s per-tensor reductions need a backend with a "
                         f"reduction phase; the {plan.backend.name!r} backend has none: "
                         "pass backend='cpu' or 'cuda'")
    on_device = getattr(plan.backend, "tensor_scalars", None)
    out = []
    for (launch, grads), scale in zip(work, scales):
        row = engine._step_rows(positions, launch, None, -1, cache)
        if not isinstance(row, tuple):  # steps in doubt exist on CUDA only
            raise RuntimeError("per-tensor reductions need the step known on the host")
        clip = GradClip(signed(engine, launch, scale), engine.clipping.limit)
        flags = engine.hypers[launch.hyper].flags
        with launch.kind.launch_context(launch.device), _threads.guard(plan.backend):
            sums = reduce(spec, flags, row, launch.group, grads, clip=clip)
            if on_device is not None:  # made and kept on the device: the host waits for nothing
                out.append(TensorScalars(row, on_device(spec, row, sums, launch.group)))
                continue
        out.append(tensor_rows(spec, row, np.asarray(sums), _sizes(launch.group)))
    return out


def _sizes(group) -> np.ndarray:
    """The element count of each tensor of ``group`` (kept in its scratch)."""
    sizes = group.scratch.get("reduction_sizes")
    if sizes is None:
        sizes = group.scratch["reduction_sizes"] = np.array(
            [kind_of(p).size(p) for p in group.params], np.float64)
    return sizes


def tensor_rows(spec, row: tuple, sums: np.ndarray, sizes) -> np.ndarray:
    """(tensors, scalars) float64: ``row`` then the per-tensor scalars ``spec`` makes from
    ``sums`` (one row per reduction term, one column per tensor)."""
    n = len(sizes)
    made = spec.tensor_scalars(np, row, sums, np.asarray(sizes, np.float64))
    rows = np.empty((n, len(row) + len(made)), np.float64)
    rows[:, :len(row)] = row
    for j, values in enumerate(made):
        rows[:, len(row) + j] = values
    return rows
