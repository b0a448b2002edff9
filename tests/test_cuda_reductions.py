"""The CUDA reduction phase (kernels/reduce.cuh, kernels/<family>_reduce.cu) run on the host
(tests/cuda_host): LAMB's and StableAdamW's per-tensor sums and scalars against the CPU
backend's, and what the phase costs the host.

The two backends add the same float64 terms in different orders: the CPU a task's blocks
of 1024 elements (reassociated by LLVM), the kernels each thread's strided elements, then a
tree per block, then the blocks in order. Every term is >= 0 (squares, g^2 / max(v, eps^2)),
so each sum is within (n - 1) u of the exact sum of the same terms (u = 2^-53, n elements;
Higham, "Accuracy and Stability of Numerical Algorithms", 4.2), and the two sums within
2 (n - 1) u of each other, relatively. That is the bound held here. The per-tensor scalars
made from them (sqrt, a ratio, a division by max(1, rms)) add a few u. Rounded to float32
for the element pass, they then agree unless a double lands within that distance of a
float32 rounding boundary; the full runs compare params and state to the CPU's in ulps
(tests/test_cuda_host.py; on these data they agree bit for bit).
"""

import numpy as np
import pytest
from cuda_host import compare

import fusedopt
from fusedopt import config
from fusedopt.backends.cpu import backend as cpu_backend
from fusedopt.backends.cuda import launch
from fusedopt.memory.steps import TensorScalars

U = 2.0**-53
SHAPES = ((1,), (3,), (4097,), (278011,), (0,), (37, 129))
NAMES = ("lamb", "stableadamw")


def _recorded(monkeypatch, module, name):
    """Patch ``module.name`` to record what it returns (host copies)."""
    real, seen = getattr(module, name), []

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(np.array(out.values if isinstance(out, TensorScalars) else out))
        return out
    monkeypatch.setattr(module, name, record)
    return seen


def _steps(name, backend, params, grads, **hp):
    cls = getattr(fusedopt, fusedopt.REGISTRY[name].class_name)
    opt = cls(backend=backend, **hp)
    for g in grads:
        opt.apply_gradients(list(zip(g, params)))
    return opt


def _problem(dtype, steps, seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) * 10.0 ** (k % 3 - 1)
              for k, s in enumerate(shapes)] for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("chunk, threads", [(None, None), (1024, 64), (64, 32)],
                         ids=["default", "chunk1024", "chunk64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("name", NAMES)
def test_sums_and_scalars_agree_with_the_cpu_within_the_order_bound(
        host_cuda, monkeypatch, name, convention, dtype, chunk, threads):
    """Three steps of the same params and grads on both backends: each step's per-tensor
    sums within 2 (n - 1) u of the CPU's (exact for one element), and the per-tensor
    scalars within a few u more; the sums are not all zero (the check has something to
    see)."""
    shapes = SHAPES
    if chunk is not None:  # many small blocks: the big tensor would only repeat them, slowly
        monkeypatch.setattr(config, "CUDA_CHUNK", chunk)
        monkeypatch.setattr(config, "THREADS_PER_BLOCK", threads)
        shapes = tuple(s for s in SHAPES if np.prod(s) < 10**5)
    params, grads = _problem(dtype, 3, seed=21, shapes=shapes)
    hp = dict(learning_rate=0.01, weight_decay=0.1, convention=convention)
    cpu_sums = _recorded(monkeypatch, cpu_backend, "reduce")
    cuda_sums = _recorded(monkeypatch, launch, "reduce")
    cuda_scalars = _recorded(monkeypatch, launch, "tensor_scalars")
    cpu_params = [p.copy() for p in params]
    _steps(name, "cpu", cpu_params, grads, **hp)
    _steps(name, "cuda", params, grads, **hp)
    n = np.array([np.prod(s) for s in shapes], np.float64)
    spec = fusedopt.REGISTRY[name]
    assert len(cuda_sums) == len(cpu_sums) == 3
    for step, (theirs, ours, made) in enumerate(zip(cpu_sums, cuda_sums, cuda_scalars)):
        theirs = theirs[:ours.shape[0]]
        assert (ours > 0).any() and (ours >= 0).all()
        bound = 2 * np.maximum(n - 1, 0) * U * np.maximum(np.abs(ours), np.abs(theirs))
        assert (np.abs(ours - theirs) <= bound).all(), (step, ours, theirs, bound)
        # The CPU's scalars from its own sums (the rows the CPU element pass reads).
        row_cpu = spec.tensor_scalars(np, _row(spec, step + 1, hp), theirs, n)
        for j, values in enumerate(row_cpu):
            assert np.allclose(made[j], values, rtol=(4 * n + 8) * U, atol=0), (step, j)


def _row(spec, t, hp):
    from fusedopt.engine.step import scalar_row
    full = {**spec.defaults(), **{k: v for k, v in hp.items() if k != "convention"}}
    return scalar_row(spec, full, t, hp["convention"])


@pytest.mark.parametrize("name", NAMES)
def test_a_step_waits_for_nothing_on_the_host(cuda_cache_dir, name):
    """The per-tensor scalars are made and read on the device: ten steps (one with clipping
    by global norm, whose scales are device arrays too) never wait for a device value."""
    from cuda_host import HostRuntime

    from fusedopt.backends.cuda import runtime
    host = HostRuntime(cuda_cache_dir / "host", events="never")
    previous = runtime.install(host)
    try:
        params, grads = _problem("float32", 10, seed=22)
        _steps(name, "cuda", params, grads, learning_rate=0.01)
        _steps(name, "cuda", params, grads, learning_rate=0.01, global_clipnorm=1.0)
    finally:
        runtime.install(previous)
    assert host.waits == 0
    # The reduction's combine at every step, and the grad pre-pass's at each clipped one.
    assert sum(1 for n, _, _ in host.launches if n == "combine_sums") == 10 + 2 * 10
    assert sum(1 for n, _, _ in host.launches if n.startswith("gradsums_reduce<")) == 10


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("clip", [dict(global_clipnorm=0.5), dict(clipnorm=0.5),
                                  dict(clipvalue=0.01)], ids=["global", "per-tensor", "value"])
def test_clipped_grads_reach_the_reduction_as_the_cpu_sees_them(host_cuda, name, clip):
    """Clipping by norm writes device scales into the table the reduction reads; the
    terms then see the clipped grads, as the element pass does and as the CPU does."""
    params, grads = _problem("float32", 5, seed=23)
    cpu_params = [p.copy() for p in params]
    hp = dict(learning_rate=0.01, weight_decay=0.1, **clip)
    _steps(name, "cpu", cpu_params, grads, **hp)
    unclipped = [p.copy() for p in params]
    _steps(name, "cuda", params, grads, **hp)
    _steps(name, "cuda", unclipped, grads, learning_rate=0.01, weight_decay=0.1)
    for ours, theirs in zip(params, cpu_params):
        assert int(compare.ulp_distance(ours, theirs).max(initial=0)) <= \
            compare.TOLERANCE["float32"]["ulps"]
    assert any(not np.array_equal(a, b) for a, b in zip(params, unclipped))


@pytest.mark.parametrize("name", NAMES)
def test_a_loss_scaled_step_with_an_inf_changes_nothing(host_cuda, name):
    """Decided on the host for these optimizers (the reduction takes the step's one row):
    an inf grad under a loss scale skips the step, the state and the step count stay."""
    params, grads = _problem("float32", 1, seed=24)
    cls = getattr(fusedopt, fusedopt.REGISTRY[name].class_name)
    opt = cls(backend="cuda", learning_rate=0.01)
    opt.apply_gradients(list(zip(grads[0], params)))
    before = [p.copy() for p in params]
    bad = [g * 8.0 for g in grads[0]]
    bad[2][5] = np.inf
    applied = opt._engine.step(bad, grad_scale=8.0)
    assert not applied and opt._engine.iterations == 1
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)
    applied = opt._engine.step([g * 8.0 for g in grads[0]], grad_scale=8.0)
    assert applied and opt._engine.iterations == 2
