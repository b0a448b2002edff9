"""Every registered optimizer on a real GPU: CuPy arrays through the CUDA backend, against the
CPU backend and the float64 reference - the host tests' comparisons, on the device.

Run with ``make test-gpu`` (``pytest -m gpu``); skipped where CuPy sees no CUDA device.
"""

import numpy as np
import pytest

from cuda_host import compare
from fusedopt._registry import REGISTRY


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
    from fusedopt._cuda import runtime
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


@pytest.mark.parametrize("name", sorted(REGISTRY))
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
