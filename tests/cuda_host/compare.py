"""Run any registered optimizer on a backend and hold it to the CPU backend and the reference.

Shared by the host-execution tests (tests/test_cuda_host.py) and the GPU tests
(tests/test_gpu.py), so both hold the CUDA kernels to the same standard. Everything is
driven by ``fusedopt.REGISTRY``: a newly registered optimizer gets its variants here
without a line of test code.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import reference

import fusedopt
from fusedopt.algorithms.registry import CONVENTIONS, OptimizerSpec

#: Param dtypes of the variant matrix (default storage); 16-bit storage and masters are
#: covered by tests/storage_runs.py.
BASE_DTYPES = ("float32", "float64")

#: Learning rate of every comparison: large enough that ten steps move params well past
#: float32 rounding, so a wrong update cannot hide under the tolerance.
LEARNING_RATE = 0.01

#: Value given to a hyperparameter whose default is off (None, 0 or False) to turn it on.
SWITCH_ON = 0.1

#: Tolerances by dtype. ``ulps``: params and state against the CPU backend (same formulas,
#: float32 rounding; the last bits may differ where the kernel orders an operation
#: differently). ``rtol``: params against the float64 reference, as max |error| over max
#: |reference| per tensor.
TOLERANCE = {
    "float32": {"ulps": 4, "rtol": 1e-6},
    "float64": {"ulps": 4, "rtol": 1e-14},
}

#: On a GPU, NVRTC contracts multiply-adds into FMAs, so last bits differ from the CPU's and
#: a state element that passes near zero can be many ulps off: compare everything as
#: max |error| over max |value| per tensor instead (``ulps`` None).
GPU_TOLERANCE = {
    "float32": {"ulps": None, "rtol": 1e-6},
    "float64": {"ulps": None, "rtol": 1e-14},
}

#: Awkward sizes: a single element, fewer than a vector, one past a chunk multiple, a big
#: odd size with many chunks, empty, and a non-square 2-D tensor.
SHAPES = ((1,), (3,), (4097,), (278011,), (0,), (37, 129))

#: Elements of the misaligned param (a view one element into a larger array).
MISALIGNED_SIZE = 1001


@dataclass(frozen=True)
class Variant:
    """One way to configure an optimizer: convention + hyperparameters (the rest default)."""

    convention: str
    hyper: tuple[tuple[str, object], ...]   # sorted (name, value) pairs

    @property
    def hp(self) -> dict:
        return dict(self.hyper)

    def id(self) -> str:
        return "-".join([self.convention] + [f"{k}={v}" for k, v in self.hyper
                                             if k != "learning_rate"])


def _candidates(spec: OptimizerSpec, hyper) -> list:
    """Values to try for one hyperparameter: its default, plus 'on' if it is off by default."""
    default = hyper.default
    values = [default]
    if callable(default):
        return values
    if isinstance(default, bool):
        values.append(not default)
    elif default is None or default == 0:
        values.append(SWITCH_ON)
    elif hyper.name == "weight_decay":  # on by default (AdamW): also try it off
        values.append(0.0)
    elif isinstance(default, (int, float)) and default < 0:  # Ftrl's power: its default
        values.append(default / 5)  # takes a square root, any other value the general path
    valid = []
    for v in values:
        try:
            hyper.validate(v)
        except ValueError:
            continue
        valid.append(v)
    return valid


def variants(spec: OptimizerSpec) -> list[Variant]:
    """Every convention x every combination of on/off hyperparameters that validates.

    A variant lists only what differs from the registry's defaults (and the learning rate).
    """
    by_name = {h.name: h for h in spec.hypers}
    choices = {h.name: _candidates(spec, h) for h in spec.hypers}
    if "learning_rate" in choices:
        choices["learning_rate"] = [LEARNING_RATE]
    names = sorted(choices)
    found = []
    for convention in CONVENTIONS:
        for values in itertools.product(*(choices[n] for n in names)):
            hp = {n: v for n, v in zip(names, values)
                  if n == "learning_rate" or v != by_name[n].default}
            if all(convention in by_name[n].conventions for n in hp if n != "learning_rate"):
                variant = Variant(convention, tuple(sorted(hp.items())))
                if _consistent(spec, variant):
                    found.append(variant)
    return found


def _consistent(spec: OptimizerSpec, variant: Variant) -> bool:
    """False for combinations the optimizer refuses (e.g. torch's nesterov without momentum)."""
    check = getattr(spec, "check", None)  # cross-hyperparameter check, where a spec has one
    if check is None:
        return True
    try:
        check(full_hyper(spec, variant), variant.convention)
    except ValueError:
        return False
    return True


def entry_of(spec: OptimizerSpec, variant: Variant, dtype: str) -> str:
    """The CUDA name expression this variant runs."""
    return spec.entry(dtype, spec.flags(full_hyper(spec, variant), variant.convention))


def step_launches(spec: OptimizerSpec, variant: Variant, dtype: str) -> list[str]:
    """The kernels one step of this variant launches per launch group, in order: for an
    optimizer with per-tensor reductions the reduction phase's two (kernels/reduce.cuh),
    then the optimizer's own."""
    entry = entry_of(spec, variant, dtype)
    if spec.reductions is None:
        return [entry]
    flags = spec.flags(full_hyper(spec, variant), variant.convention)
    return [spec.reduce_entry(dtype, flags), "combine_sums", entry]


def full_hyper(spec: OptimizerSpec, variant: Variant) -> dict:
    hp = spec.defaults()
    hp.update(variant.hp)
    return hp


@dataclass
class Problem:
    """Initial params and every step's grads, as float64 host arrays (cast per dtype)."""

    params: list[np.ndarray]
    grads: list[list[np.ndarray]]   # grads[step][tensor]
    misaligned: tuple[int, ...] = ()  # tensors whose param is a misaligned view


def make_problem(shapes, steps: int, seed: int, misaligned: tuple[int, ...] = ()) -> Problem:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    return Problem(params, grads, misaligned)


def _misaligned_copy(xp, values, dtype):
    """``values`` in a view that starts one element into a larger array: never 16-byte aligned."""
    base = xp.zeros(values.size + 1, dtype=dtype)
    view = base[1:].reshape(values.shape)
    view[...] = xp.asarray(values, dtype=dtype)
    return view


def run_backend(spec: OptimizerSpec, variant: Variant, problem: Problem, dtype: str,
                backend: str, xp=np):
    """Run every step with ``fusedopt.functional.update``; returns host (params, states)."""
    hp = full_hyper(spec, variant)
    slot_names = spec.slots(spec.flags(hp, variant.convention))
    init = spec.slot_init(hp)
    params = []
    for t, p in enumerate(problem.params):
        params.append(_misaligned_copy(xp, p, dtype) if t in problem.misaligned
                      else xp.array(p, dtype=dtype))  # a copy: the problem stays as made
    copies = {s.name for s in spec.slot_decls if s.from_param}  # schedule-free's z
    states = [[p.copy() if n in copies else xp.full(p.shape, init, dtype=dtype)
               for n in slot_names] for p in params]
    for step, grads in enumerate(problem.grads, start=1):
        device_grads = [xp.array(g, dtype=dtype) for g in grads]
        fusedopt.functional.update(spec.name, params, device_grads, states, step=step,
                                   convention=variant.convention, backend=backend,
                                   **variant.hp)
    host = (lambda a: a.get()) if xp is not np else (lambda a: np.array(a))
    return [host(p) for p in params], [{n: host(s) for n, s in zip(slot_names, ss)}
                                       for ss in states]


def run_reference(spec: OptimizerSpec, variant: Variant, problem: Problem, dtype: str):
    """The float64 oracle over the same steps, from params rounded to ``dtype`` as stored."""
    hp = full_hyper(spec, variant)
    params = [np.asarray(p, dtype=dtype).astype(np.float64) for p in problem.params]
    states = [{} for _ in params]
    for step, grads in enumerate(problem.grads, start=1):
        for t, g in enumerate(grads):
            g = np.asarray(g, dtype=dtype).astype(np.float64)
            params[t] = reference.step(spec.name, params[t], g, states[t], step, hp,
                                       variant.convention)
    return params


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between same-dtype float arrays (0 for equal values)."""
    ints = {4: np.int32, 8: np.int64}[a.dtype.itemsize]

    def ordered(x):
        i = x.view(ints).astype(np.int64) if ints is np.int32 else x.view(ints)
        return np.where(i < 0, -(i & np.iinfo(ints).max), i)

    with np.errstate(over="ignore"):
        return np.abs(ordered(np.ascontiguousarray(a)) - ordered(np.ascontiguousarray(b)))


def _relative_error(a, b) -> float:
    """max |a - b| over max |b|: 0 for equal arrays, scale-free."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b)))
    error = float(np.max(np.abs(a - b)))
    return error / scale if scale else error


def _assert_same(what, a, c, tol) -> None:
    """``a`` against the CPU backend's ``c``: in ulps, or relatively where ulps is None."""
    if tol["ulps"] is not None:
        ulps = int(ulp_distance(a, c).max())
        assert ulps <= tol["ulps"], (f"{what}: {ulps} ulps from the CPU backend (allowed "
                                     f"{tol['ulps']}), e.g. {_worst(a, c)}")
    else:
        error = _relative_error(a, c)
        assert error <= tol["rtol"], (f"{what}: relative error {error:.3g} against the CPU "
                                      f"backend (allowed {tol['rtol']:g})")


def assert_close(what: str, actual, cpu, expected, dtype: str, cpu_states=None,
                 actual_states=None, tolerance=None) -> None:
    """``actual`` params (and states) against the CPU backend's (unless ``cpu`` is None) and
    the reference's."""
    tol = (tolerance or TOLERANCE)[dtype]
    cpu = cpu if cpu is not None else [None] * len(actual)
    for t, (a, c, r) in enumerate(zip(actual, cpu, expected)):
        where = f"{what}, tensor {t} of shape {a.shape}"
        assert a.dtype == np.dtype(dtype), f"{where}: dtype {a.dtype}, expected {dtype}"
        if a.size == 0:
            continue
        if c is not None:
            _assert_same(where, a, c, tol)
        error = _relative_error(a, r)
        assert error <= tol["rtol"], (f"{where}: relative error {error:.3g} against the "
                                      f"reference (allowed {tol['rtol']:g})")
    for t, (a_s, c_s) in enumerate(zip(actual_states or [], cpu_states or [])):
        for name in c_s:
            if c_s[name].size:
                _assert_same(f"{what}, tensor {t}, state {name!r}", a_s[name], c_s[name], tol)


def _worst(a, b) -> str:
    i = int(np.argmax(ulp_distance(a, b)))
    return f"element {i}: {a.ravel()[i]!r} vs {b.ravel()[i]!r}"
