"""Adafactor on CUDA (kernels/factored.cuh, kernels/adafactor.cu, kernels/adafactor_reduce.cu)
run on the host (tests/cuda_host): against the CPU backend and the float64 oracle, both
conventions, float32 and float64, awkward and misaligned shapes, several launch shapes.

Where the two backends add in the same order they agree bit for bit: every operation of
the factors' update, the estimate, the element rule and the terms is the same float
operation in the same grouping. Three sums are ordered differently: a row's sum of squares
(the CPU's loop is reassociated by LLVM), a slice's sum of its row factors (NumPy's
pairwise sum) and the reduction's per-tensor sums (kernels/reduce.cuh's tree;
tests/test_cuda_reductions.py). Every term is >= 0, so each sum of n terms, in any order,
is within (n - 1) u of the exact sum (u = 2^-53; Higham, "Accuracy and Stability of
Numerical Algorithms", 4.2), the two backends' within 2 (n - 1) u of each other; rounded
once to the compute type they then agree unless the exact value lies within that distance
of a rounding boundary, where one ulp flips. The factors and denominators are held to that
bound against exact sums (``math.fsum``); whole runs are held to the CPU in the ulps every
CUDA host run allows (tests/cuda_host/compare.py) and to the oracle.
"""

import math

import numpy as np
import pytest
import reference
from cuda_host import compare

import fusedopt
from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import launch

SPEC = REGISTRY["adafactor"]
U = 2.0**-53
#: Every rank and edge of the factored path: 3-D, single rows and columns, 1-D, 0-D, empty
#: slices; the last two run as views one element into their buffers (the scalar path).
SHAPES = ((3, 5, 7), (1, 1), (64, 1), (1, 300), (37, 53), (4097,), (), (2, 0, 3), (9, 13),
          (1001,))
MISALIGNED = (8, 9)
STEPS = 4
#: The five launches of a step, in order, one each for every tensor of a dtype.
PHASES = ("adafactor_factor<", "adafactor_means<", "adafactor_reduce<", "combine_sums",
          "adafactor<")


def _array(values, dtype, misaligned):
    values = np.asarray(values)
    if not misaligned:
        return values.astype(dtype)
    base = np.zeros(values.size + 1, dtype)
    view = base[1:].reshape(values.shape)
    view[...] = values
    return view


def _problem(dtype, steps, seed, shapes=SHAPES, misaligned=MISALIGNED):
    rng = np.random.default_rng(seed)
    params = [_array(rng.standard_normal(s), dtype, i in misaligned)
              for i, s in enumerate(shapes)]
    grads = [[_array(rng.standard_normal(s) * 10.0 ** (k % 3 - 1), dtype, k in misaligned)
              for k, s in enumerate(shapes)] for _ in range(steps)]
    return params, grads


def _run(backend, params, grads, moved=None, **hp):
    """Steps of copies of ``params``; ``moved``: a list that gets, per tensor, the sum over
    the steps of each element's |change| (float64)."""
    params = [p.copy() for p in params]
    opt = fusedopt.Adafactor(backend=backend, **hp)
    if moved is not None:
        moved[:] = [np.zeros(p.shape) for p in params]
    for g in grads:
        before = [p.astype(np.float64) for p in params]
        opt.apply_gradients(list(zip(g, params)))
        if moved is not None:
            for m, b, p in zip(moved, before, params):
                m += np.abs(p - b)
    return params, opt


def _oracle(params, grads, convention, **hp):
    full = {**SPEC.defaults(), **hp}
    out = []
    for t, p in enumerate(params):
        state, q = {}, p.astype(np.float64)
        for step, g in enumerate(grads, start=1):
            q = reference.adafactor(q, g[t].astype(np.float64), state, step, full, convention)
        out.append(q)
    return out


#: Each convention and dtype once, each launch shape (the default; many small blocks with
#: idle threads) with both conventions and both dtypes.
RUNS = [("keras", "float32", None, None), ("keras", "float64", 64, 32),
        ("torch", "float32", 64, 32), ("torch", "float64", None, None)]


@pytest.mark.parametrize("convention, dtype, chunk, threads", RUNS,
                         ids=[f"{c}-{d}-{'chunk64' if k else 'default'}" for c, d, k, _ in RUNS])
def test_steps_match_the_cpu_and_the_oracle(host_cuda, monkeypatch, convention, dtype, chunk,
                                            threads):
    """Params and factors against the CPU backend and the oracle; five launches a step
    whatever the tensor count, each one block per work item. float32: in the ulps of every
    CUDA host run. float64, whose per-tensor scalars are not rounded to a coarser type, so
    the sums' order reaches the update: each tensor's step_lr (alpha, clip_ratio) within
    (3 n + 8) u of the CPU's (the two sums' 2 (n - 1) u, halved by the square roots, and the
    few roundings of the scalars), the factors within 2 (n - 1) u, so each element within
    twice that of the sum of its updates' sizes (differences carried from earlier steps are
    scaled by wd_factor <= 1), and 4 ulps of its rounding."""
    if chunk is not None:  # many blocks a tensor: the factor phase's shares of lines
        monkeypatch.setattr(config, "CUDA_CHUNK", chunk)
        monkeypatch.setattr(config, "THREADS_PER_BLOCK", threads)
    hp = dict(learning_rate=0.05, weight_decay=0.1, convention=convention)
    params, grads = _problem(dtype, STEPS, seed=31)
    ours, opt = _run("cuda", params, grads, **hp)
    n_work = sum(-(-int(np.prod(s)) // config.CUDA_CHUNK) for s in SHAPES)
    names = [name for name, _, _ in host_cuda.launches]
    assert len(names) == len(PHASES) * STEPS
    assert all(n.startswith(p) for n, p in zip(names, PHASES * STEPS)), names[:5]
    assert all(grid == (n_work, 1, 1) for name, grid, _ in host_cuda.launches
               if name != "combine_sums")
    expected = _oracle(params, grads, convention, learning_rate=0.05, weight_decay=0.1)
    if (convention, dtype) == ("keras", "float64"):
        # The one CPU variant no other test compiles (seconds of Numba, cold): the oracle,
        # and the factors' bound below, hold this one.
        compare.assert_close(f"adafactor {convention} {dtype}", ours, None, expected, dtype)
        return
    moved = []
    cpu, cpu_opt = _run("cpu", params, grads, moved, **hp)
    if dtype == "float32":
        states = [dict(zip("rcv", s)) for s in opt._engine.states]
        cpu_states = [dict(zip("rcv", s)) for s in cpu_opt._engine.states]
        compare.assert_close(f"adafactor {convention} {dtype}", ours, cpu, expected, dtype,
                             cpu_states, states)
    else:
        compare.assert_close(f"adafactor {convention} {dtype}", ours, None, expected, dtype)
        for shape, a, b, m in zip(SHAPES, ours, cpu, moved):
            n = int(np.prod(shape))
            bound = 2 * (3 * n + 8) * U * m + 4 * np.spacing(np.abs(b))
            assert (np.abs(a - b) <= bound).all(), shape
            assert m.size == 0 or m.max() > 0  # the bound is not the ulps alone


def _exact_bound(value, exact, n, dtype):
    """|value - exact| within half an ulp of the rounding and the (n + 1) u of the sum and
    its division."""
    ulp = np.spacing(np.abs(exact).astype(dtype)).astype(np.float64)
    return np.abs(value.astype(np.float64) - exact) <= 0.5 * ulp + (n + 1) * U * np.abs(exact)


@pytest.mark.parametrize("dtype", compare.BASE_DTYPES)
@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_factors_and_denominators_are_within_the_order_bound(host_cuda, convention, dtype):
    """After the first step (weight 1 on the new squares) each factor is its line's mean of
    the squares, rounded once, and each slice's denominator its row factors' mean (torch:
    floored at eps1): both within the bound of exact sums. Rows of grads five orders of
    magnitude apart make the order of a sum matter."""
    shapes = ((300, 70), (2, 129, 37), (1, 300))
    rng = np.random.default_rng(32)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 3, s)).astype(dtype)
             for s in shapes]
    _, opt = _run("cuda", params, [grads], convention=convention)
    k = SPEC.Scalars(*(np.dtype(dtype).type(x) for x in launch_row(convention)))
    f = SPEC.named_flags(SPEC.flags(SPEC.defaults(), convention))
    denominators = opt._engine.launch_groups()[0].group.scratch["factor_denominators"]
    first = 0
    for g, (r, c, _) in zip(grads, opt._engine.states):
        B, R, C = int(np.prod(g.shape[:-2])), g.shape[-2], g.shape[-1]
        sq = SPEC.factored.square(g, k, f).reshape(B, R, C).astype(np.float64)
        rows = np.array([[math.fsum(sq[b, i]) / C for i in range(R)] for b in range(B)])
        cols = np.array([[math.fsum(sq[b, :, j]) / R for j in range(C)] for b in range(B)])
        assert _exact_bound(r.reshape(B, R), rows, C, dtype).all()
        assert _exact_bound(c.reshape(B, C), cols, R, dtype).all()
        rr = r.reshape(B, R).astype(np.float64)
        means = np.array([math.fsum(rr[b]) / R for b in range(B)])
        if convention == "torch":
            means = np.maximum(means, float(k.eps1))
        assert _exact_bound(denominators[first: first + B], means, R, dtype).all()
        first += B
    assert first == denominators.size


def launch_row(convention):
    """The first step's scalars of the registry defaults, the per-tensor ones 0."""
    from fusedopt.engine.step import scalar_row
    row = scalar_row(SPEC, SPEC.defaults(), 1, convention)
    return (*row, *(0.0 for _ in SPEC.reductions.scalar_names))


@pytest.mark.parametrize("clip", [dict(global_clipnorm=0.5), dict(clipvalue=0.01)],
                         ids=["global-norm", "value"])
def test_clipped_grads_reach_every_phase(host_cuda, clip):
    """The grad scales and limit of the table reach the factor phase, the reduction and the
    element pass as the CPU's passes see them; the clip changes the result."""
    params, grads = _problem("float32", 2, seed=33)
    ours, _ = _run("cuda", params, grads, learning_rate=0.05, **clip)
    cpu, _ = _run("cpu", params, grads, learning_rate=0.05, **clip)
    unclipped, _ = _run("cuda", params, grads, learning_rate=0.05)
    for a, b in zip(ours, cpu):
        assert int(compare.ulp_distance(a, b).max(initial=0)) <= \
            compare.TOLERANCE["float32"]["ulps"]
    assert any(not np.array_equal(a, b) for a, b in zip(ours, unclipped))


def test_a_step_waits_for_nothing_on_the_host(cuda_cache_dir):
    """The denominators and per-tensor scalars are made on the device: steps (one set
    clipped by global norm, whose scales are device arrays too) never wait for a value."""
    from cuda_host import HostRuntime

    from fusedopt.backends.cuda import runtime
    host = HostRuntime(cuda_cache_dir / "host", events="never")
    previous = runtime.install(host)
    try:
        params, grads = _problem("float32", 2, seed=34)
        _run("cuda", params, grads)
        _run("cuda", params, grads, global_clipnorm=1.0)
    finally:
        runtime.install(previous)
    assert host.waits == 0
    assert sum(1 for n, _, _ in host.launches if n.startswith("adafactor_factor<")) == 4


def test_a_loss_scaled_step_with_an_inf_changes_nothing(host_cuda):
    """An inf grad under a loss scale skips the step: params, factors and step count stay."""
    params, grads = _problem("float32", 1, seed=35)
    opt = fusedopt.Adafactor(backend="cuda")
    opt.apply_gradients(list(zip(grads[0], params)))
    before = [p.copy() for p in params] + [s.copy() for st in opt._engine.states for s in st]
    bad = [np.array(g * 8.0, g.dtype) for g in grads[0]]
    bad[4][2, 3] = np.inf
    assert not opt._engine.step(bad, grad_scale=8.0) and opt._engine.iterations == 1
    after = list(params) + [s for st in opt._engine.states for s in st]
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)
    assert opt._engine.step([np.array(g * 8.0, g.dtype) for g in grads[0]], grad_scale=8.0)


def test_entry_points_are_plain_storage_and_reach_the_gates():
    """Plain float32 and float64 storage only (what the CPU offers a factored moment), each
    with its factor phase in the family's module and its reduction with combine_sums."""
    names = launch.all_entry_points()
    element = {e for _, _, e in SPEC.entries()}
    assert {st.template_args() for st, _, _ in SPEC.entries()} == {
        "float, float, float, 0", "double, double, double, 0"}
    assert len(element) == 4
    assert set(names["adafactor"]) == element | {e.replace("adafactor<", f"adafactor_{p}<")
                                                 for e in element for p in ("factor", "means")}
    assert set(names["adafactor_reduce"]) == {*SPEC.reduce_entries(), "combine_sums"}
