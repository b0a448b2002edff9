"""Numba compile options, and a cache location that never breaks ``import fusedopt``.

Numba writes its cache beside the source when it can and otherwise under the user's cache
directory. Where neither is writable (a read-only site-packages and a read-only home), a
``cache=True`` function fails when first compiled, so caching is turned off instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _cache_usable() -> bool:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return _writable(Path(os.environ["NUMBA_CACHE_DIR"]))
    beside_source = Path(__file__).resolve().parent / "__pycache__"
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "numba"
    return _writable(beside_source) or _writable(user)


#: error_model="numpy": division by zero gives inf/nan as on a GPU, and no per-element
#: check blocks vectorization. No fastmath: it would change sqrt and division results.
JIT_OPTIONS = {"error_model": "numpy", "cache": _cache_usable(), "nogil": True}
