"""CuPy accepts the kernels as the runtime hands them over (no device needed: CuPy compiles
lazily, on the first ``get_function``)."""

import numpy as np
import pytest

from fusedopt._cuda import launch, runtime, source

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
