import os

os.environ.setdefault("KERAS_BACKEND", "torch")


# --- The CUDA path without a GPU (kernels/README.md): compiled kernels, host runtime ---------
import functools  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cuda_cache_dir(tmp_path_factory):
    """Folder of compiled-kernel artifacts, kept between sessions (tests/cuda_host/cache.py)."""
    from cuda_host.cache import cache_root
    return cache_root(lambda: tmp_path_factory.mktemp("fusedopt-cuda"))


@pytest.fixture(scope="session")
def nvrtc_compiled(cuda_cache_dir):
    """(family, arch) -> fusedopt._cuda.nvrtc.Compiled, compiled at most once per session."""
    pytest.importorskip("cuda.bindings.nvrtc",
                        reason="the CUDA gates need cuda-bindings: pip install fusedopt[cudacheck]")
    from fusedopt._cuda import nvrtc

    @functools.lru_cache(maxsize=None)
    def compiled(family, arch):
        return nvrtc.compile_family(family, arch, cache_dir=cuda_cache_dir / "nvrtc")
    return compiled


@pytest.fixture
def host_cuda(cuda_cache_dir):
    """The CUDA backend on the host: kernels built with g++, run on NumPy arrays."""
    from cuda_host import HostRuntime
    from fusedopt._cuda import runtime
    host = HostRuntime(cuda_cache_dir / "host")
    previous = runtime.install(host)
    yield host
    runtime.install(previous)
