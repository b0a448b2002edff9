"""Quantized state (``state_dtype="q8"``/``"q4"``, and the other maps' "q8-dynamic"/"q4-power")
on the CPU backend.

- Quantization itself: a value stored by the step decodes within half the map's local gap
  (times the block's absmax) of the value, at 0, for denormals, for a block whose absmax is
  0, and the map's sign chosen per slot; inf and NaN grads under loss scaling change
  nothing (tests/quantized_runs.py is the oracle).
- Every registered optimizer, each of its slot layouts (``_cases``): a fused step (and the
  unfused baseline's) equals the float64 reference applied to the decoded state, then
  quantized again, code for code but for stated ties; the param (and a float32 slot beside
  the codes: schedule-free's z) within float32's error of the reference's.
"""

from __future__ import annotations

import numpy as np
import pytest
import quantized_runs as oracle
import reference
import storage_runs
import variants

import fusedopt
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.engine import Engine
from fusedopt.memory import quant

FORMATS = ("q8", "q4")
#: The formats' other maps (q8-dynamic: tables; q4-power: arithmetic codes on the CPU): the
#: bound, and the first variant of these optimizers (a signed and a non-negative slot; one
#: slot; a slot kept as a difference).
OTHER_MAPS = ("q8-dynamic", "q4-power")
OTHER_OPTIMIZERS = ("adam", "sgd", "ftrl")
#: Below, at and past a block, one past a q4 pair, 2-D, several blocks and a tail.
SHAPES = ((3,), (128,), (257,), (37, 53), (1031,))
STEPS = 4


def _engine(name, hp, convention, fmt, params, backend="cpu", **kw):
    engine = Engine(REGISTRY[name], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=0, **kw)
    engine.add_group(hp)
    engine.add_params(params)
    return engine


def _bound(stored, absmax_of_element, fmt, signed):
    """The error a stored value may have: half the gap between the two map entries around
    value / absmax, in the value's units; a value beyond the map's ends (under the
    smallest entry of q4's unsigned map, which has no zero; -absmax, where the signed
    dynamic map ends at -0.993) is stored as that end entry, so its distance to it."""
    entries = quant.qmap(fmt, signed).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        normal = np.where(absmax_of_element > 0, stored / absmax_of_element, 0.0)
    above = np.clip(np.searchsorted(entries, normal), 1, entries.size - 1)
    gap = entries[above] - entries[above - 1]
    outside = np.maximum(entries[0] - normal, normal - entries[-1])
    return np.maximum(gap / 2, outside) * absmax_of_element


CASES = {
    "mixed": lambda rng, n: rng.standard_normal(n) * rng.choice([1e-3, 1.0, 30.0], n),
    "zeros": lambda rng, n: np.zeros(n),
    "denormals": lambda rng, n: rng.standard_normal(n) * 1e-40,
    "zero block": lambda rng, n: np.concatenate([np.zeros(256), rng.standard_normal(n - 256)]),
    "one large": lambda rng, n: np.where(np.arange(n) % 97 == 0, 1e4, rng.standard_normal(n)),
}


@pytest.mark.parametrize("fmt", FORMATS + OTHER_MAPS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stored_value_is_within_half_a_gap(case, fmt):
    """torch SGD's momentum buffer is the grad at its first step, and torch Adagrad's sum
    (from 0) is g*g: so one step stores chosen values in a signed and an unsigned slot."""
    rng = np.random.default_rng(7)
    n = 1000
    g = CASES[case](rng, n).astype(np.float32)
    for name, hp, stored, signed in (
            ("sgd", dict(learning_rate=0.1, momentum=0.9), g.astype(np.float64), True),
            ("adagrad", dict(learning_rate=0.1, initial_accumulator_value=0.0),
             (g * g).astype(np.float64), False)):
        p = np.ones(n, np.float32)
        engine = _engine(name, hp, "torch", fmt, [p])
        engine.step([g.copy()])
        buffer = engine.states[0][0]
        got = oracle.decode(buffer, n, fmt, signed)
        _, absmax = quant.codes_and_scales(buffer, n, fmt)
        block = quant.FORMATS[fmt].block
        per_element = np.repeat(absmax.astype(np.float64), block)[:n]
        bound = _bound(stored, per_element, fmt, signed)
        # the float32 roundings of value / absmax and of the decode's product (whose
        # spacing below float32's smallest normal is 2**-149)
        slack = 4 * np.finfo(np.float32).eps * per_element + 2.0 ** -148
        err = np.abs(got - stored)
        assert np.all(err <= bound + slack), (
            f"{name} {fmt} {case}: {np.count_nonzero(err > bound + slack)} values further "
            f"than half a gap, worst {err.max()!r}")
        if case == "zeros" or case == "zero block":
            assert np.all(got[:256] == 0) and np.all(absmax[:1] == 0)
        if not np.any(stored):
            assert not np.any(got)


@pytest.mark.parametrize("fmt", FORMATS)
def test_inf_and_nan_grads_under_loss_scaling_change_nothing(fmt):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(5000).astype(np.float32)
    opt = fusedopt.Adam(learning_rate=0.01, state_dtype=fmt)
    opt.apply_gradients([(rng.standard_normal(5000).astype(np.float32), p)])
    before = [np.array(s, copy=True) for s in opt._engine.states[0]]
    p_before = p.copy()
    for bad in (np.inf, np.nan):
        g = rng.standard_normal(5000).astype(np.float32)
        g[4321] = bad
        opt.apply_gradients([(g, p)], grad_scale=2.0)
        assert opt.found_inf
        assert np.array_equal(p, p_before)
        assert all(np.array_equal(a, b) for a, b in zip(before, opt._engine.states[0]))


#: Quantized state is refused for Adafactor (its second moment is already factored);
#: schedule-free's z (and the kept y) stay float32 beside it (``float_state``),
#: so schedule-free AdamW quantizes v and SGD nothing. A schedule-free switch is no
#: optimizer of its own (it runs on its optimizer's storage). Muon's quantized momentum is
#: checked against its float32 step on decoded state in tests/test_muon_quantized.py (its
#: step is two passes around Newton-Schulz, which the float64 reference here has not).
PASSES = {n for n, s in REGISTRY.items() if not s.public or s.matrix is not None}
REFUSED = sorted(n for n, s in REGISTRY.items() if s.public and s.factored is not None)
assert not {"schedulefreeadamw", "schedulefreesgd"} & set(REFUSED)


def _slot_layout(spec, flags) -> tuple:
    """What quantized storage sees of a variant: its slots, and the map each takes."""
    return tuple(spec.slots(flags)), tuple(spec.signed_slots(flags))


def _cases():
    """In q8, the first variant of every optimizer with each slot layout it has; in q4
    (the same rule between other codes), the first variant of each.

    A variant is a kernel of its own, compiled cold at seconds each. Variants that share a
    slot layout differ in their rule's arithmetic only (the convention, nesterov, a
    decay form), which every backend's float32 and float64 runs hold to the reference
    variant by variant (tests/test_backends_vs_reference.py); what the quantized loop
    adds around the rule - which slots it decodes and encodes, with which map, and the
    step on codes - is the layout's, checked here once per layout."""
    out = []
    for name in sorted(set(REGISTRY) - set(REFUSED) - PASSES):
        spec, layouts = REGISTRY[name], set()
        for k, (hp, convention, flags) in enumerate(variants.variants(spec)):
            layout = _slot_layout(spec, flags)
            if layout in layouts:
                continue
            layouts.add(layout)
            other = OTHER_MAPS if k == 0 and name in OTHER_OPTIMIZERS else ()
            for fmt in (FORMATS if k == 0 else FORMATS[:1]) + other:
                out.append(pytest.param(name, hp, convention, fmt,
                                        id=f"{name}-{convention}-{flags}-{fmt}"))
    return out


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("name,hp,convention,fmt", _cases())
def test_every_optimizer_step_is_the_reference_on_decoded_state(name, hp, convention, fmt,
                                                                 backend):
    """The fused CPU step, and the unfused baseline (decode, the rule's array expressions,
    encode: a pass each)."""
    spec = REGISTRY[name]
    hp = dict(hp, learning_rate=0.01)
    full = {**spec.defaults(), **hp}
    engine_flags = spec.flags(full, convention)
    signed = dict(zip(spec.slots(engine_flags), spec.signed_slots(engine_flags)))
    rng = np.random.default_rng(sorted(REGISTRY).index(name))
    params = [(rng.standard_normal(s) * 3).astype(np.float32) for s in SHAPES]
    engine = _engine(name, hp, convention, fmt, params, backend)
    scalar_state = [{} for _ in params]
    ties = values = 0
    for t in range(1, STEPS + 1):
        grads = [(rng.standard_normal(s) * rng.choice([0.1, 1.0, 3.0])).astype(np.float32)
                 for s in SHAPES]
        before = [(p.astype(np.float64), {k: np.array(v, copy=True)
                                          for k, v in engine.state(i).items()})
                  for i, p in enumerate(params)]
        engine.step([g.copy() for g in grads])
        for k, (p, slots) in enumerate(before):
            n = p.size
            state = dict(scalar_state[k])
            if t > 1:  # at step 1 the reference makes its own initial state
                state.update({s: (buf.astype(np.float64) if signed[s] is None else
                                  oracle.decode(buf, n, fmt, signed[s])).reshape(p.shape)
                              for s, buf in slots.items()})
            operands = storage_runs.OPERANDS.get(name)
            operands = {} if operands is None else operands(
                full, p, grads[k].astype(np.float64), dict(state), "float32")
            expected = reference.step(name, p, grads[k].astype(np.float64), state, t, full,
                                      convention)
            scalar_state[k] = {s: v for s, v in state.items() if not isinstance(v, np.ndarray)}
            what = f"{name} {fmt} step {t} tensor {k}"
            got = params[k].astype(np.float64)
            if name == "lion":  # lr * sign(c): where c is within rounding of 0, either sign
                keep = np.abs(expected - p) > 0.5 * full["learning_rate"]
                got, expected = got[keep], expected[keep]
            scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
            np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6 * scale,
                                       err_msg=f"{what}: param")
            for s, buf in engine.state(k).items():
                if signed[s] is None:  # float_state (schedule-free's z): float32, not codes
                    assert buf.dtype == np.float32 and buf.shape == p.shape
                    zs = max(1.0, float(np.abs(state[s]).max(initial=0.0)))
                    np.testing.assert_allclose(buf, state[s], rtol=2e-5, atol=2e-6 * zs,
                                               err_msg=f"{what}: slot {s}")
                    continue
                ties += oracle.compare_codes(buf, state[s].reshape(-1), fmt, signed[s],
                                             f"{what}, slot {s}", operands.get(s))
                values += n
    assert ties <= oracle.TIE_SHARE * max(values, 1)


def test_the_code_check_fails_on_a_truncating_store():
    """Codes one lower than the nearest wherever the value is not exactly an entry (a
    store that truncates toward the lower entry) fail the comparison."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal(1000)
    codes, absmax, normal = oracle.nearest_codes(values, "q8", True)
    entries = quant.qmap("q8", True).astype(np.float64)
    lower = np.where(entries[codes] > normal, np.maximum(codes - 1, 0), codes)
    assert np.count_nonzero(lower != codes) > 100
    buffer = quant.pack(lower.astype(np.uint8), absmax.astype(np.float32), "q8")
    with pytest.raises(AssertionError, match="oracle"):
        oracle.compare_codes(buffer, values, "q8", True, "truncated")


@pytest.mark.parametrize("name", REFUSED)
def test_optimizers_it_does_not_cover_refuse_quantized_state(name):
    cls = {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}[name]
    with pytest.raises(ValueError, match="state_dtype='q8' (is not supported for|does not "
                                         "apply to adafactor: its second moment is already "
                                         "factored)"):
        cls(state_dtype="q8")


def test_the_unfused_baseline_refuses_stochastic_codes_and_changes_nothing():
    rng = np.random.default_rng(4)
    p = rng.standard_normal(300).astype(np.float32)
    before = p.copy()
    opt = fusedopt.AdamW(learning_rate=0.01, state_dtype="q8", min_quantized_size=0,
                         stochastic_rounding=True, backend="unfused")
    with pytest.raises(ValueError, match="unfused backend rounds quantized state to nearest "
                                         "only: use backend='cpu'"):
        opt.apply_gradients([(rng.standard_normal(300).astype(np.float32), p)])
    assert np.array_equal(p, before)


def test_a_shard_counts_as_its_whole_param():
    """A door that steps one shard of a param (fusedopt.torch under FSDP2) passes the whole
    param's size: the shard's state is quantized as the param's would be, an empty shard's
    too, in blocks that start at the shard's own element 0 (the same step as an engine
    quantizing every param)."""
    rng = np.random.default_rng(5)
    shard = rng.standard_normal(3000).astype(np.float32)
    empty = np.zeros((0, 50), np.float32)
    engine = Engine(REGISTRY["adam"], "keras", backend="cpu", state_dtype="q8")
    engine.add_group({})
    engine.add_params([shard, shard.copy(), empty], sizes=[6000, 3000, 5000])
    assert [s.state for s in engine.storages] == ["q8", "float32", "q8"]
    alone = _engine("adam", {}, "keras", "q8", [shard.copy()])
    for _ in range(STEPS):
        g = rng.standard_normal(3000).astype(np.float32)
        engine.step([g, g.copy(), np.zeros_like(empty)])
        alone.step([g.copy()])
    assert np.array_equal(engine.params[0], alone.params[0])
    assert all(np.array_equal(a, b) for a, b in zip(engine.states[0], alone.states[0]))
    with pytest.raises(ValueError, match="1 params but 2 sizes"):
        engine.add_params([np.ones(5, np.float32)], sizes=[5, 6])
