"""The step's reduction phases: per-tensor sums that a later pass needs before it runs.

An elementwise optimizer reads one element at a time. Some need a number of the whole
tensor first - LAMB its trust ratio ||p|| / ||update||, StableAdamW the RMS of g^2 / v -
and declare it (``reductions`` in fusedopt/algorithms/spec.py): the terms summed per tensor,
a rule that gives them for one element, and how the sums become per-tensor scalars that
the element rule reads beside the step's own (``k.trust_lr``). The grad pre-pass is one
more user of the same machinery: its sums (each tensor's sum of g^2 and of g - g) are
declared the same way (fusedopt/algorithms/gradsums.py) and run by the same backend entry
point (``reduce``), one launch per launch group; clipping by norm and the loss scale's
inf/NaN test read them.

The phases of a step (fusedopt/engine/step.py), as they read memory:

1. the grad pre-pass (:func:`grad_prepass`), only when clipping by norm or an unchecked
   loss scale needs it: a reduction of the grads alone, each as stored (widened to
   float64, not clipped: its sums decide the clip), nothing else loaded and nothing
   written; fusedopt/engine/clip.py makes the grad scales every later phase applies from
   the sums of g^2 (on the grads' device), and the sums of g - g (NaN where a grad is inf
   or NaN) skip the step - read on the host, or on CUDA made into the step's device flag
   (the backend's ``raise_flag``) that every later kernel of the step reads, the host
   waiting for nothing;
2. for an optimizer with a factored second moment (Adafactor), the factor phase
   (:func:`factor_phase`): a read of the grads that moves each tensor's row and column
   factors, small arrays the later passes read by row and by column;
3. the optimizer's reductions (:func:`reduction_phase`), only for an optimizer that
   declares them: one read of what its rule reads (for LAMB and StableAdamW: param, grad
   and state), one launch per launch group (one Numba call for every tensor of a dtype),
   nothing written;
4. the element pass, with a row of scalars per tensor: the step's, then the per-tensor
   ones made here in float64 from float64 sums - on the host for the CPU backends; on
   the device for CUDA (the backend's ``tensor_scalars``: the same declared formulas run
   as CuPy array operations), where the element kernel reads them beside the step's row
   (:class:`~fusedopt.memory.steps.TensorScalars`) and the host reads nothing back.

Each phase needs the one before it: the grad scales change the terms (LAMB's update is
not linear in g, so a clipped grad cannot be folded in afterwards), and the terms decide
every element's update. No phase writes what an earlier one read, so an inf found by the
pre-pass still leaves everything as it was.

So a float32 LAMB step that clips by norm is three passes: the pre-pass reads g (4 bytes
an element), the reduction p, g, m, v (16), the element pass reads p, g, m, v and writes p,
m, v (28): 48 bytes an element, and 3 launches per launch group (with the CUDA combine of
each reduction's block sums, 5). Three passes is the fewest: no grad's scale is known
before every grad of its tensor (or, for ``global_clipnorm``, of the step) was read, LAMB's
norms need the scaled grads (its update is not a sum of per-element terms in the scale:
sqrt(v) divides it), and the element pass needs those norms. In bytes the floor is 44:
LAMB's 40 without clipping (its module and README.md say why) and the 4 of the pre-pass;
the 4 above it are what LAMB's reduction spends recomputing u from g, m and v rather than
writing it and reading it back, with or without clipping. Without clipping a step reads the
grads twice. The bytes of each optimizer's passes are in its module's docstring.
"""

from __future__ import annotations

import numpy as np

from ..algorithms.gradsums import GRAD_SUMS
from ..memory.arrays import kind_of
from ..memory.steps import TensorScalars
from . import threads as _threads
from .clip import GradClip, grad_scales


def signed(engine, launch, scale):
    """The grad scale of ``launch`` with a maximizing group's -1 folded in (None: 1)."""
    if engine.hypers[launch.hyper].maximize:
        return -1.0 if scale is None else -scale
    return scale


def _refuse(spec, backend, what: str) -> None:
    raise ValueError(f"{spec.class_name}'s {what} run on the 'cpu' and 'unfused' backends; "
                     f"the {backend.name!r} backend has no kernels for them yet: pass NumPy "
                     "arrays (CPU tensors) or backend='cpu'")


def grad_prepass(engine, plan, work, window, slot, grad_scale, checked):
    """The grad pre-pass, where clipping by norm or an unchecked loss scale needs it: each
    launch's sums of :data:`~fusedopt.algorithms.gradsums.GRAD_SUMS` (one backend
    ``reduce`` per launch, on the arrays' device and stream), made into each launch's grad
    scales (fusedopt/engine/clip.py); None when an inf or NaN grad was found on the host.
    Decided on the device (``window``: the flag ring, ``slot`` this step's), the backend's
    ``raise_flag`` sets the step's flag from the finiteness sums and the host reads nothing.
    """
    if not (engine.clipping.by_norm or (grad_scale is not None and not checked)):
        if grad_scale is not None:
            return [_full(launch.device is not None, len(g), grad_scale) for launch, g in work]
        return [None] * len(work)
    sums = []
    for launch, g in work:
        with launch.kind.launch_context(launch.device), _threads.guard(plan.backend):
            sums.append(plan.backend.reduce(GRAD_SUMS, (), (), launch.group, g))
    if grad_scale is not None and not checked:
        if window is not None:
            for k, ((launch, _), launch_sums) in enumerate(zip(work, sums)):
                with launch.kind.launch_context(launch.device):
                    plan.backend.raise_flag(launch_sums[1], window.flags, slot, or_in=k > 0)
        elif any(_not_finite(s[1]) for s in sums):
            return None
    return grad_scales(engine.clipping, [s[0] for s in sums], grad_scale)


def _not_finite(finite_sums) -> bool:
    """Whether a tensor's sum of g - g is NaN (a host read of a device array)."""
    return bool((finite_sums != finite_sums).any()) if finite_sums.size else False


def _full(on_device: bool, n: int, grad_scale):
    """``n`` copies of 1/grad_scale (float64): in host memory for the CPU backends (whatever
    the arrays' library), else as a CuPy array on the current device."""
    if on_device:
        import cupy as xp
    else:
        xp = np
    return xp.zeros(n, np.float64) + 1.0 / xp.asarray(grad_scale, np.float64)


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
