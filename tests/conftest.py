import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

#: Set by `make test` (and so by CI): everything `make test` installs must be there. A test
#: that skips for a missing package, compiler or sanitizer runtime fails instead, so a missing
#: install step cannot pass as green; only the skips for absent hardware stay skips.
STRICT = os.environ.get("FUSEDOPT_STRICT_SKIPS") == "1"

#: Skip reasons that name hardware this machine lacks, not something `make test` installs.
HARDWARE_REASONS = ("CUDA device", "a GPU is present")
#: Skip reasons that name an optional extra `make test` does not install (pyproject.toml).
OPTIONAL_EXTRAS = ("fusedopt[hf]",)


def _fail_install_skip(report) -> None:
    """Turn ``report``'s skip into a failure when strict and not for missing hardware."""
    if not (STRICT and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(
        report.longrepr)
    if not any(r in reason for r in HARDWARE_REASONS + OPTIONAL_EXTRAS):
        report.outcome = "failed"
        report.longrepr = (f"skipped under FUSEDOPT_STRICT_SKIPS=1 (make test installs what "
                           f"this test needs, so a skip means an install step is missing): "
                           f"{reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_install_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole module at collection
    _fail_install_skip(outcome.get_result())


# --- The CUDA path without a GPU (kernels/README.md): compiled kernels, host runtime ---------
import contextlib  # noqa: E402
import functools  # noqa: E402


@pytest.fixture(scope="session")
def cuda_cache_dir(tmp_path_factory):
    """Folder of compiled-kernel artifacts, kept between sessions (tests/cuda_host/cache.py)."""
    from cuda_host.cache import cache_root
    return cache_root(lambda: tmp_path_factory.mktemp("fusedopt-cuda"))


@pytest.fixture(scope="session")
def nvrtc_compiled(cuda_cache_dir):
    """(family, arch) -> fusedopt.backends.cuda.nvrtc.Compiled, compiled at most once per session."""
    pytest.importorskip("cuda.bindings.nvrtc",
                        reason="the CUDA gates need cuda-bindings: pip install fusedopt[cudacheck]")
    from fusedopt.backends.cuda import nvrtc
    # Every family and architecture at once, one compile per core: the gates' cold cost is
    # NVRTC's, and it compiles a program on one core. One pytest worker does it; the others
    # wait for it and then read the cache.
    with _building(cuda_cache_dir, "nvrtc"):
        nvrtc.compile_all(cuda_cache_dir / "nvrtc", workers=os.cpu_count() or 1)

    @functools.lru_cache(maxsize=None)
    def compiled(family, arch):
        return nvrtc.compile_family(family, arch, cache_dir=cuda_cache_dir / "nvrtc")
    return compiled


@pytest.fixture(scope="session")
def host_built(cuda_cache_dir):
    """Every kernel family built for the host once, one g++ per core."""
    from cuda_host import build

    from fusedopt.backends.cuda import launch
    with _building(cuda_cache_dir, "host"):
        build.build_all(launch.all_entry_points(), cuda_cache_dir / "host",
                        workers=os.cpu_count() or 1)
    return cuda_cache_dir / "host"


@pytest.fixture
def backend(request):
    """For ``indirect`` parametrization: "cpu", or "cuda" with the host runtime installed."""
    if request.param == "cuda":
        request.getfixturevalue("host_cuda")
    return request.param


@contextlib.contextmanager
def _building(cache_dir, what: str):
    """Held while one process fills ``cache_dir``'s ``what`` artifacts: pytest workers
    (pytest-xdist) sharing a cache build each artifact once, with every core, in turn."""
    import fcntl
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{what}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def host_cuda(host_built):
    """The CUDA backend on the host: kernels built with g++, run on NumPy arrays."""
    from cuda_host import HostRuntime

    from fusedopt.backends.cuda import runtime
    host = HostRuntime(host_built)
    previous = runtime.install(host)
    yield host
    runtime.install(previous)


# --- Hypothesis profiles (tests/test_properties.py) --------------------------------------------
from hypothesis import settings as _hypothesis_settings  # noqa: E402

#: ``ci`` (the default, and what `make test` and CI run): a fixed number of examples drawn
#: the same way every run. ``deep``: a longer randomized search for a developer's machine,
#: ``HYPOTHESIS_PROFILE=deep .venv/bin/python -m pytest tests/test_properties.py``.
_hypothesis_settings.register_profile("ci", max_examples=40, derandomize=True, database=None,
                                      deadline=None, print_blob=True)
_hypothesis_settings.register_profile("deep", max_examples=2000, deadline=None,
                                      print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
