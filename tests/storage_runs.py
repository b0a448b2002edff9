"""Runs of every registered optimizer on 16-bit storage, step by step, held to the float64
reference with the same storage roundings (tests/reference.py ``stored_step``).

Shared by the CPU tests and the CUDA host-execution tests (tests/test_storage_*.py), so
both backends meet the same bar. At every step the reference starts from the values the
backend stored after the previous step (widened exactly to float64) and the same grads,
and its param and state are rounded once to their storage dtypes; every stored value of
the backend must then be within ``ULPS`` units in the last place of the reference's.
Starting each step from the stored values is what makes the bound a statement about one
step's arithmetic and rounding: two runs of a rounded recurrence that differ by one ulp
once may drift apart by more later without either being wrong.

Where the float32 arithmetic of the step is itself less precise than the storage - a
float32 state, or a value that cancels to near zero (m after g changes sign, a param
crossing zero), whose 16-bit ulp is smaller than float32's error on the operands - one
ulp of storage is not a bound any float32 computation can meet. There a value is held to
what every float32 backend of the suite is held to instead (tests/tolerances.py,
``VS_REFERENCE[float32]``: relative to the tensor's largest value, with an absolute
floor), and :class:`Tally` counts how many values needed that; the tests bound the count.
For Lion, whose update is lr * sign(c), elements whose direction c is within that
tolerance of zero are left out (the sign itself is then the rounding; tests/cases.py
``SIGN_SENSITIVE``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import reference
import variants
from tolerances import VS_REFERENCE

from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.engine import Engine

#: At most this many units in the last place between a stored value and the reference's.
ULPS = 1

#: Large enough that 16-bit params move every step or two (a bfloat16 ulp at 1 is 2^-7).
LEARNING_RATE = 0.02

#: Awkward sizes: fewer than a vector, a vector's worth, one past a chunk multiple, 2-D.
SHAPES = ((3,), (8,), (4097,), (37, 53))

STEPS = 50


@dataclass
class Snapshot:
    """The stored values after one step, widened to float64."""

    params: list
    states: list  # per tensor: {slot name: array}


def setting(name):
    """The optimizer's first variant (weight decay on where it has one), Keras' convention,
    with a learning rate that moves 16-bit params."""
    hp, convention, _ = variants.variants(REGISTRY[name])[0]
    return dict(hp, learning_rate=LEARNING_RATE), convention


def make_problem(shapes, steps: int, seed: int):
    """Params around +-3 and ``steps`` grads of mixed scale, float64."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) * 3 for s in shapes]
    grads = [[rng.standard_normal(s) * rng.choice([0.1, 1.0, 3.0]) for s in shapes]
             for _ in range(steps)]
    return params, grads


def widen(array) -> np.ndarray:
    return np.asarray(array).astype(np.float64)


def run(spec, hp: dict, convention: str, params, grads, backend: str, *, param_dtype: str,
        state_dtype=None, master_weights=False, grad_dtype=None, snapshots: bool = True):
    """Step the engine; returns (engine, the arrays it stepped, per-step Snapshots)."""
    engine = Engine(spec, convention, backend=backend, state_dtype=state_dtype,
                    master_weights=master_weights)
    engine.add_group(hp)
    dt = reference.as_dtype(param_dtype)
    arrays = [np.asarray(p).astype(dt) for p in params]
    engine.add_params(arrays)
    taken = [_snapshot(engine)] if snapshots else []
    gdt = reference.as_dtype(grad_dtype or param_dtype)
    for step_grads in grads:
        engine.step([np.asarray(g).astype(gdt) for g in step_grads])
        if snapshots:
            taken.append(_snapshot(engine))
    return engine, arrays, taken


def _snapshot(engine) -> Snapshot:
    return Snapshot([widen(p) for p in engine.params],
                    [{n: np.array(s, copy=True) for n, s in engine.state(i).items()}
                     for i in range(len(engine.params))])


def ulp_distance(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """Units in the last place between float64 ``a`` and ``b``, both exactly values of
    ``dtype`` (0 where equal, counting through zero)."""
    dt = reference.as_dtype(dtype)
    ints = {2: np.int16, 4: np.int32, 8: np.int64}[dt.itemsize]

    def ordered(x):
        i = np.asarray(x).astype(dt).view(ints).astype(np.int64)
        return np.where(i < 0, -(i & np.iinfo(ints).max), i)

    with np.errstate(over="ignore", invalid="ignore"):
        return np.abs(ordered(a) - ordered(b))


@dataclass
class Tally:
    """How the 16-bit stored values of a run compared with the reference's: how many,
    how many differed at all (a correct rounding differs only next to a rounding
    boundary), how many were held to the float32 tolerance; values of float32 state are
    counted apart; Lion's elements left out; params that moved."""

    values: int = 0
    differed: int = 0
    by_tolerance: int = 0
    float32_values: int = 0
    left_out: int = 0
    moved: int = 0

    def share(self, count: int) -> float:
        return count / max(self.values, 1)

    def check(self, what: str, differing: float = 1e-2, by_tolerance: float = 1e-3) -> None:
        """A run that did something, whose 16-bit values are the reference's roundings but
        for a few (next to a rounding boundary, float32 and float64 arithmetic can round
        apart): a store that truncated or rounded away would differ in about half."""
        assert self.moved > 0, f"{what}: no param moved; the run proves nothing"
        assert self.share(self.differed) <= differing, (
            f"{what}: {self.differed} of {self.values} 16-bit values differ from the "
            "reference's rounding (a rounding mode other than nearest even?)")
        assert self.share(self.by_tolerance) <= by_tolerance, (
            f"{what}: {self.by_tolerance} of {self.values} 16-bit values needed the float32 "
            "tolerance")


def master_of(snapshot: Snapshot, k: int) -> np.ndarray | None:
    """Tensor ``k``'s float32 master as float64: the master slot, or the bf16 param and its
    int16 remainder put together ((hi << 16) + r, bit for bit); None without one."""
    states = snapshot.states[k]
    if "master" in states:
        return widen(states["master"])
    if "remainder" in states:
        hi = snapshot.params[k].astype(reference.as_dtype("bfloat16")).view(np.uint16)
        bits = (hi.astype(np.uint32) << 16) + states["remainder"].astype(np.int32).view(
            np.uint32)
        return widen(bits.view(np.float32))
    return None


#: Registered optimizer -> its slots that start as a copy of the param (schedule-free's z).
_FROM_PARAM = {name: {s.name for s in spec.slot_decls if s.from_param}
               for name, spec in REGISTRY.items()}


def check_against_reference(spec, hp, convention, grads, taken, param_dtype: str,
                            state_dtype: str, what: str, grad_dtype=None) -> Tally:
    """Every step of ``taken`` against the reference started from the step before. With a
    master (slot or remainder) the reference steps the float32 master, and the param must
    be that master rounded to nearest (ties away), bit for bit. With a Kahan compensation
    the reference steps param + compensation, and the compensation must be what the
    param's store lost, rounded; stochastic stores are one of the two neighbours of the
    exact value, so within one ulp of the reference's nearest (their Tally differs in
    about half the values: not for Tally.check)."""
    full = {**spec.defaults(), **hp}
    scalars: list[dict] = [{} for _ in taken[0].params]  # the reference's own scalar state
    gdt = reference.as_dtype(grad_dtype or param_dtype)
    tally = Tally()
    for t in range(1, len(taken)):
        before, after = taken[t - 1], taken[t]
        for k, p in enumerate(before.params):
            master = master_of(before, k)
            weight_dtype = param_dtype if master is None else "float32"
            p = p if master is None else master
            kahan = "compensation" in before.states[k]
            if kahan:
                p = p + widen(before.states[k]["compensation"])
            state = dict(scalars[k])
            if t > 1:  # at step 1 the reference makes its own initial state
                state.update({n: widen(v) for n, v in before.states[k].items()
                              if n not in ("master", "remainder", "compensation")})
            else:  # but a slot that starts as the param starts as stored (state dtype)
                state.update({n: widen(v) for n, v in before.states[k].items()
                              if n in _FROM_PARAM.get(spec.name, ())})
            g = widen(np.asarray(grads[t - 1][k]).astype(gdt))
            keep = _clear_of_zero(spec, full, state, g) if spec.name == "lion" else None
            operands = OPERANDS[spec.name](full, p, g, state, state_dtype) \
                if spec.name in OPERANDS else {}
            exact: dict = {}
            expected = reference.stored_step(spec.name, p, g, state, t, full, convention,
                                             weight_dtype, state_dtype, exact)
            scalars[k] = {n: v for n, v in state.items() if not isinstance(v, np.ndarray)}
            where = f"{what}, step {t}, tensor {k}"
            got = after.params[k] if master is None else master_of(after, k)
            _compare(tally, got, expected, exact["param"], weight_dtype,
                     f"{where}, {'param' if master is None else 'master'}", keep,
                     scale=operands.get("param"))
            if kahan:
                # What the store lost, of a param computed in float32: it carries the
                # param's own float32 error, so it is held to the param's bound (a rule
                # that rebuilds the param, as schedule-free's, errs by an ulp of it).
                lost = exact["param"] - got
                _compare(tally, widen(after.states[k]["compensation"]),
                         reference.rounded(lost, param_dtype), lost, param_dtype,
                         f"{where}, compensation", keep, scale=exact["param"])
            if master is not None:
                copy = reference.nearest_away(got, param_dtype)
                same = (copy == after.params[k]) | (np.isnan(copy) & np.isnan(after.params[k]))
                assert same.all(), (f"{where}: the param is not its master rounded to nearest "
                                    f"(ties away) at {int(np.count_nonzero(~same))} elements")
            for name, value in after.states[k].items():
                if name in state:
                    _compare(tally, widen(value), state[name], exact[name], state_dtype,
                             f"{where}, state {name!r}", keep, scale=operands.get(name))
            tally.moved += int(np.count_nonzero(after.params[k] != before.params[k]))
    return tally


def _ftrl_operands(hp, p, g, state, state_dtype) -> dict:
    """Ftrl adds sigma * p to its linear term, sigma = (n'^q - n^q) / lr: two powers, each
    within about an ulp in float32, whose difference cancels wherever g^2 << n. Its float32
    error is then about an ulp of n^q / lr * |p| however small sigma is: Keras' own float32
    rule errs the same, and no float32 evaluation of the formula does better than its
    operands allow (a bfloat16 state's ulp is coarser, which is why its values meet one ulp
    anyway). So the linear term is held to the float32 tolerance relative to its operands,
    |linear| + |g| + |2 l2_shrinkage p| + (n'^q + n^q) / lr |p|, and the param, the linear
    term over the quadratic term n'^q / lr + 2 (l2 + beta / (2 lr)), to those over it."""
    lr, q = hp["learning_rate"], -hp["learning_rate_power"]
    start = float(reference.rounded(hp["initial_accumulator_value"], state_dtype))
    n, z = state.get("accumulator", start), state.get("linear", 0.0)
    grown = n + g * g
    operands = (np.abs(z) + np.abs(g) + 2 * hp["l2_shrinkage_regularization_strength"]
                * np.abs(p) + (grown**q + n**q) / lr * np.abs(p))
    quadratic = grown**q / lr + 2 * (hp["l2_regularization_strength"] + hp["beta"] / (2 * lr))
    return {"linear": operands, "param": operands / quadratic}


#: Optimizer -> the scales of the values its float32 step computes as a difference of much
#: larger terms (the float32 tolerance is relative to those, not to the result).
OPERANDS = {"ftrl": _ftrl_operands}


def _clear_of_zero(spec, hp, state, g) -> np.ndarray:
    """Lion: elements whose direction c = b1 m + (1 - b1) g is clear of zero."""
    m = state.get("m", np.zeros_like(g))
    c = hp["beta_1"] * m + (1 - hp["beta_1"]) * g
    tol = VS_REFERENCE[np.float32]
    scale = max(float(np.max(np.abs(m), initial=0)), float(np.max(np.abs(g), initial=0)))
    return np.abs(c) > tol["rtol"] * scale + tol["atol"]


def _compare(tally, got, expected, exact, dtype, where, keep=None, scale=None) -> None:
    """``scale``: the values the float32 tolerance is relative to (default ``exact``)."""
    if got.size == 0:
        return
    scale = exact if scale is None else scale
    if keep is not None:
        tally.left_out += int(np.count_nonzero(~keep))
        got, expected, exact, scale = got[keep], expected[keep], exact[keep], scale[keep]
    d = ulp_distance(got, expected, dtype)
    tol = VS_REFERENCE[np.float32]
    bound = tol["rtol"] * float(np.max(np.abs(scale), initial=0.0)) + tol["atol"]
    near = np.abs(got - exact) <= bound
    ok = (d <= ULPS) | near
    if reference.as_dtype(dtype).itemsize == 2:
        tally.values += got.size
        tally.differed += int(np.count_nonzero(d))
        tally.by_tolerance += int(np.count_nonzero(~(d <= ULPS) & near))
    else:
        tally.float32_values += got.size
    if not ok.all():
        i = int(np.argmax(np.where(ok, -1, d)))
        raise AssertionError(f"{where}: {int(np.count_nonzero(~ok))} of {d.size} values more "
                             f"than {ULPS} ulp from the reference and outside the float32 "
                             f"tolerance {bound:.3g}, e.g. element {i}: {got.ravel()[i]!r} vs "
                             f"{expected.ravel()[i]!r} ({int(d.ravel()[i])} ulps)")
