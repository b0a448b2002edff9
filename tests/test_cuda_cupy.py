"""CuPy accepts the kernels as the runtime hands them over (no device needed: CuPy compiles
lazily, on the first ``get_function``)."""

import numpy as np
import pytest

from fusedopt.backends.cuda import launch, runtime, source

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")

FAMILIES = list(launch.all_entry_points())


@pytest.mark.parametrize("family", FAMILIES)
def test_raw_module_is_constructed(family):
    names = launch.name_expressions(family)
    module = cupy.RawModule(code=source.source(family), options=source.options(),
                            name_expressions=names)
    assert module.code == source.source(family)
    assert tuple(module.name_expressions) == tuple(names)
    assert tuple(module.options) == tuple(source.options())


def test_cupy_runtime_is_the_default():
    previous = runtime.install(None)
    try:
        current = runtime.current()
        assert isinstance(current, runtime.CupyRuntime)
        assert not current.accepts(np.zeros(3))  # NumPy arrays never go to the device
    finally:
        runtime.install(previous)


class _CupyShaped:
    """What the step's checks read of a CuPy array, with CuPy's own flags class (which has no
    ``writeable``); no device needed."""

    def __init__(self, n):
        from cupy._core.flags import Flags
        self.shape, self.dtype, self.strides, self.size = (n,), np.dtype(np.float32), (4,), n
        self.flags = Flags(True, n <= 1, True)


def test_validation_takes_cupy_flags():
    """The checks every step runs use only flags CuPy arrays have."""
    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.engine import validate as _validate
    spec = next(iter(REGISTRY.values()))
    p, g = _CupyShaped(4), _CupyShaped(4)
    _validate.check_pair(0, p, g, spec)
    _validate.check_state(0, p, [_CupyShaped(4)], ["s"])
    assert _validate.contiguous(g) is g
