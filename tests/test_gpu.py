"""Every registered optimizer on a real GPU: CuPy arrays through the CUDA backend, against the
CPU backend and the float64 reference - the host tests' comparisons, on the device.

Run with ``make test-gpu`` (``pytest -m gpu``); skipped where CuPy sees no CUDA device.
"""

import numpy as np
import pytest
from cuda_host import compare

from fusedopt.algorithms.registry import REGISTRY


def _device_count() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return 0


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(_device_count() == 0, reason="CuPy sees no CUDA device")]

STEPS = 10
VARIANTS = [(spec, dtype, v) for spec in REGISTRY.values() for dtype in compare.BASE_DTYPES
            for v in compare.variants(spec)]


@pytest.fixture
def cupy_runtime():
    """The default CuPy runtime, whatever another test installed."""
    from fusedopt.backends.cuda import runtime
    previous = runtime.install(runtime.CupyRuntime())
    yield runtime.current()
    runtime.install(previous)


@pytest.mark.parametrize("spec, dtype, variant", VARIANTS,
                         ids=[f"{s.name}-{d}-{v.id()}" for s, d, v in VARIANTS])
def test_gpu_matches_cpu_and_reference(cupy_runtime, spec, dtype, variant):
    import cupy
    shapes = (*compare.SHAPES, (compare.MISALIGNED_SIZE,))
    problem = compare.make_problem(shapes, STEPS, seed=1, misaligned=(len(compare.SHAPES),))
    actual, actual_states = compare.run_backend(spec, variant, problem, dtype, "cuda", xp=cupy)
    cpu, cpu_states = compare.run_backend(spec, variant, problem, dtype, "cpu")
    expected = compare.run_reference(spec, variant, problem, dtype)
    compare.assert_close(f"{spec.name} {dtype} {variant.id()} on the GPU", actual, cpu,
                         expected, dtype, cpu_states, actual_states,
                         tolerance=compare.GPU_TOLERANCE)


#: The optimizers with CUDA kernels (Adafactor and Muon have none yet: refused there).
ON_CUDA = sorted(name for name, spec in REGISTRY.items() if spec.on_cuda)


@pytest.mark.parametrize("name", ON_CUDA)
def test_gpu_auto_backend_keeps_arrays_on_the_device(cupy_runtime, name):
    """backend='auto' sends CuPy arrays to the CUDA kernels and leaves them CuPy arrays."""
    import cupy

    import fusedopt
    spec = REGISTRY[name]
    variant = compare.variants(spec)[0]
    hp = compare.full_hyper(spec, variant)
    slots = spec.slots(spec.flags(hp, variant.convention))
    p = cupy.asarray(np.linspace(-1, 1, 4097, dtype=np.float32))
    before = p.copy()
    states = [[cupy.full(p.shape, spec.slot_init(hp), dtype=p.dtype) for _ in slots]]
    fusedopt.functional.update(name, [p], [cupy.ones_like(p)], states, step=1,
                               convention=variant.convention, **variant.hp)
    cupy.cuda.Device().synchronize()
    assert isinstance(p, cupy.ndarray) and not bool(cupy.array_equal(p, before))


# --- 16-bit storage, masters and loss scaling on the device (not yet run on a GPU) -----------

STORAGE_CASES = [("bfloat16", {}), ("bfloat16", dict(state_dtype="bfloat16")),
                 ("float16", {}), ("bfloat16", dict(master_weights=True)),
                 ("bfloat16", dict(master_weights="remainder")),
                 ("float16", dict(master_weights=True))]


@pytest.mark.parametrize("dtype, storage", STORAGE_CASES, ids=str)
@pytest.mark.parametrize("name", [n for n in ON_CUDA if REGISTRY[n].public])  # classes
def test_gpu_16bit_storage_matches_the_cpu(cupy_runtime, name, dtype, storage):
    """Params on the GPU within 2 ulps of the CPU backend's after 20 steps (FMA contraction
    on the GPU may round a value the other way once), states within 2 ulps too."""
    import cupy
    import reference
    import storage_runs as runs

    import fusedopt
    cls = {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}[name]
    dt = reference.as_dtype(dtype)
    params, grads = runs.make_problem(runs.SHAPES, 20, seed=2)
    on_gpu = [cupy.asarray(p.astype(dt)) for p in params]
    on_cpu = [p.astype(dt) for p in params]
    gpu = cls(learning_rate=runs.LEARNING_RATE, backend="cuda", **storage)
    cpu = cls(learning_rate=runs.LEARNING_RATE, backend="cpu", **storage)
    for step in grads:
        gpu.apply_gradients(zip([cupy.asarray(g.astype(dt)) for g in step], on_gpu))
        cpu.apply_gradients(zip([g.astype(dt) for g in step], on_cpu))
    for a, b in zip(on_gpu, on_cpu):
        d = runs.ulp_distance(a.get().astype(np.float64), b.astype(np.float64), dtype)
        assert int(d.max()) <= 2, f"{name} {dtype} {storage}: {int(d.max())} ulps"


def test_gpu_skipped_loss_scaled_step_does_not_change_the_run(cupy_runtime):
    """An inf on the device skips the step there; the run equals one without that step."""
    import cupy

    import fusedopt
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(np.float32) for s in ((5,), (4097,))]
    scaled = [cupy.asarray(p) for p in start]
    plain = [cupy.asarray(p) for p in start]
    a, b = fusedopt.Adam(backend="cuda"), fusedopt.Adam(backend="cuda")
    for t in range(5):
        grads = [cupy.asarray(rng.standard_normal(p.shape).astype(np.float32)) for p in start]
        bad = [g * 16 for g in grads]
        if t == 2:
            bad[1][7] = np.inf
        a.apply_gradients(zip(bad, scaled), grad_scale=16.0)
        if t != 2:
            b.apply_gradients(zip(grads, plain))
    assert a._engine.pending() > 0  # decided on the device: nothing was read yet
    for x, y in zip(scaled, plain):
        cupy.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert a.iterations == 4
