"""The CUDA source text, options and entry names that the runtime hands to NVRTC.

One function produces them so that the compile gate in the test suite compiles exactly
what ``cupy.RawModule`` will compile on a user's GPU.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

from ... import config

_INCLUDE = re.compile(r'^#include "([\w.]+)"\s*$', re.MULTILINE)


def kernel_dir() -> Path:
    """Folder of the ``.cu`` files: inside an installed wheel, or the source tree's."""
    shipped = Path(str(resources.files("fusedopt"))) / "kernels"
    return shipped if shipped.is_dir() else Path(__file__).resolve().parents[3] / "kernels"


@functools.lru_cache(maxsize=None)
def source(family: str) -> str:
    """``kernels/<family>.cu`` with its local includes inlined, so the text is self-contained.

    Inlining keeps CuPy's on-disk cache honest: it hashes the source text, and would not
    notice a changed header that NVRTC found through ``-I``.
    """
    folder = kernel_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (folder / name).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(f"{family}.cu")


def options() -> tuple[str, ...]:
    return tuple(config.NVRTC_OPTIONS)


def include_dirs() -> tuple[str, ...]:
    """Where NVRTC finds ``<cuda_bf16.h>`` and ``<cuda_fp16.h>`` when CuPy compiles.

    ``cupy.RawModule`` adds ``-I<CUDA path>/include`` itself (``cupy.cuda.get_cuda_path()``:
    the nvidia-cuda-runtime wheel's ``nvidia/cu13`` folder, or a toolkit), so the runtime
    passes only :func:`options`; the compile gate, which calls NVRTC directly, adds this
    folder the same way (tests/test_cuda_compile.py checks it against CuPy's own options).
    """
    import cupy  # the gates' environment has it (the cudacheck extra)
    root = cupy.cuda.get_cuda_path()
    if root is None:
        raise RuntimeError("CuPy finds no CUDA headers (cuda_bf16.h); install "
                           "nvidia-cuda-runtime (the cudacheck extra has it)")
    return (str(Path(root) / "include"),)
