"""Stochastic rounding and Kahan summation in whole runs: the same bits everywhere.

- Every registered optimizer (its first variant), bfloat16 and float16 params, stochastic
  rounding (with bfloat16 state, so state stores round stochastically too) and Kahan
  summation: the CUDA host execution and the unfused backend give the same bits at every
  step, params and every state slot; the CPU backend too, for Adam and Lion (each Numba
  specialization costs seconds of a cold suite; the rounding is one piece of the generic
  loop, the same for every rule - tests/test_masters.py makes the same choice).
- Same seed, same bits; another seed, other bits; the bits of a param depend on its
  position, not on the order or the subset of a call.
- fusedopt.functional.update and FlatParams take the options and give the optimizer's bits.
"""

import numpy as np
import pytest
import storage_runs as runs
import variants

from cases import MATRIX_ONLY, assert_refused

from fusedopt import Adam, FlatParams, functional
from fusedopt.algorithms.registry import REGISTRY

#: Muon keeps plain storage only (tests/cases.py MATRIX_ONLY).
NAMES = sorted(set(REGISTRY) - MATRIX_ONLY)
SHAPES = ((3,), (8,), (4097,), (37, 53))
STEPS = 5
MODES = {"stochastic": dict(stochastic_rounding=True, state_dtype="bfloat16", seed=11),
         "kahan": dict(kahan_summation=True)}
#: Through the CUDA host, or the CPU for an optimizer without CUDA kernels (reductions).
CASES = ([("cuda" if REGISTRY[n].on_cuda else "cpu", n, d, m) for n in NAMES
          for d in ("bfloat16", "float16") for m in MODES]
         + [("cpu", n, "bfloat16", m) for n in ("adam", "lion") for m in MODES])


def _bits(a):
    """A copy of ``a``'s bits."""
    a = np.array(a, copy=True)
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a.view(np.uint32)


def _run(name, dtype, mode, backend, request, steps=STEPS, **extra):
    if backend == "cuda":
        request.getfixturevalue("host_cuda")
    hp, convention, _ = variants.variants(REGISTRY[name])[0]
    hp = dict(hp, learning_rate=runs.LEARNING_RATE)
    params, grads = runs.make_problem(SHAPES, steps, seed=21)
    arrays = [p.astype(runs.reference.as_dtype(dtype)) for p in params]
    opt = variants.make(name, hp, convention, backend=backend, **{**MODES[mode], **extra})
    taken = []
    for step in grads:
        opt.apply_gradients([(g.astype(a.dtype), a) for g, a in zip(step, arrays)])
        taken.append([[_bits(a)] + [_bits(s) for s in opt.state(a).values()] for a in arrays])
    return taken


@pytest.mark.parametrize("backend, name, dtype, mode", CASES,
                         ids=[f"{b}-{n}-{d}-{m}" for b, n, d, m in CASES])
def test_same_bits_as_unfused(backend, name, dtype, mode, request):
    if "bfloat16" not in REGISTRY[name].dtypes:  # Adafactor: no 16-bit params
        return assert_refused(name, dtype)
    fused = _run(name, dtype, mode, backend, request)
    unfused = _run(name, dtype, mode, "unfused", request)
    for t, (a, b) in enumerate(zip(fused, unfused)):
        for k, (x, y) in enumerate(zip(a, b)):
            for j, (u, v) in enumerate(zip(x, y)):
                assert np.array_equal(u, v), f"{name} {mode} step {t} tensor {k} array {j}"
    assert not np.array_equal(fused[0][2][0], fused[-1][2][0]), "the params did not move"


def test_cpu_equals_cuda_host(request):
    cpu = _run("adam", "bfloat16", "stochastic", "cpu", request)
    cuda = _run("adam", "bfloat16", "stochastic", "cuda", request)
    assert all(np.array_equal(u, v) for a, b in zip(cpu, cuda) for x, y in zip(a, b)
               for u, v in zip(x, y))


def test_the_seed_keys_the_bits(request):
    first = _run("adam", "bfloat16", "stochastic", "cpu", request, steps=2)
    again = _run("adam", "bfloat16", "stochastic", "cpu", request, steps=2)
    other = _run("adam", "bfloat16", "stochastic", "cpu", request, steps=2, seed=12)
    assert all(np.array_equal(u, v) for a, b in zip(first, again) for x, y in zip(a, b)
               for u, v in zip(x, y))
    param = first[-1][2][0]
    differ = np.count_nonzero(param != other[-1][2][0])
    assert differ > 0.1 * param.size, f"another seed changed only {differ} of {param.size}"


def _problem(n=3, size=2000, seed=5):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(size).astype(runs.reference.as_dtype("bfloat16"))
              for _ in range(n)]
    grads = [[rng.standard_normal(size).astype(p.dtype) for p in params] for _ in range(2)]
    return params, grads


def test_bits_follow_the_position_not_the_call():
    """Stepping params in another order, or a subset, gives each param the bits of its
    position: the same as stepping all of them in order."""
    params, grads = _problem()
    runs_ = []
    for order in ([0, 1, 2], [2, 0, 1], [1]):
        ps = [p.copy() for p in params]
        opt = Adam(learning_rate=0.01, stochastic_rounding=True, seed=3)
        opt.build(ps)
        for step in grads:
            opt.apply_gradients([(step[i], ps[i]) for i in order])
        runs_.append(ps)
    for k in range(3):
        assert np.array_equal(runs_[0][k].view(np.uint16), runs_[1][k].view(np.uint16))
    assert np.array_equal(runs_[0][1].view(np.uint16), runs_[2][1].view(np.uint16))


def test_functional_and_flat_give_the_optimizers_bits():
    params, grads = _problem()
    ps = [p.copy() for p in params]
    opt = Adam(learning_rate=0.01, stochastic_rounding=True, seed=8)
    opt.apply_gradients(zip(grads[0], ps))
    qs = [p.copy() for p in params]
    states = [[np.zeros(p.shape, np.float32), np.zeros(p.shape, np.float32)] for p in qs]
    functional.update("adam", qs, grads[0], states, step=1, learning_rate=0.01,
                      stochastic_rounding=True, seed=8)
    for p, q in zip(ps, qs):
        assert np.array_equal(p.view(np.uint16), q.view(np.uint16))
    # A FlatParams arena is one param per dtype run (position 0 here), its elements
    # indexed through the whole run: the bits of stepping its buffer as one param.
    arena = FlatParams.from_arrays([p.copy() for p in params])
    grads_flat = next(iter(arena.grad_buffers.values()))
    grads_flat[...] = np.arange(grads_flat.size) % 7 - 3
    flat_opt = Adam(learning_rate=0.01, stochastic_rounding=True, seed=8)
    whole = next(iter(arena.buffers.values())).copy()
    flat_opt.apply_gradients(arena)
    (segment,) = flat_opt._engine.params
    whole = whole[: segment.size]
    single = Adam(learning_rate=0.01, stochastic_rounding=True, seed=8)
    single.apply_gradients([(grads_flat[: segment.size].copy(), whole)])
    assert np.array_equal(segment.view(np.uint16), whole.view(np.uint16))


def test_kahan_needs_no_seed_and_is_deterministic():
    params, grads = _problem()
    out = []
    for seed in (0, 99):
        ps = [p.copy() for p in params]
        opt = Adam(learning_rate=0.01, kahan_summation=True, seed=seed)
        for step in grads:
            opt.apply_gradients(zip(step, ps))
        out.append(ps)
        assert opt.state(ps[0])["compensation"].dtype == ps[0].dtype
    assert all(np.array_equal(a.view(np.uint16), b.view(np.uint16)) for a, b in zip(*out))
