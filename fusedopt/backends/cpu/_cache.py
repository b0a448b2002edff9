"""Numba compile options, and a cache location that never breaks ``import fusedopt``.

Numba writes its cache beside the source when it can and otherwise under the user's cache
directory. Where neither is writable (a read-only site-packages and a read-only home), a
``cache=True`` function fails when first compiled, so caching is turned off instead.
"""

from __future__ import annotations

import hashlib
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

# Plain jitted functions, not Numba's IR inlining (which recompiles a callee's IR at every
# call site: 20-35 s per variant here); LLVM inlines them all the same.
RULE = {"error_model": "numpy"}


def named(*key):
    """Names a closure by what it closes over, before it is jitted.

    These closures are compiled as functions of their own (not inlined by Numba), and
    Numba's symbol for a function is its qualified name, its argument types and a counter
    of the process that compiled it. Two processes can give two closures of one factory
    (say, ``encode`` for q4's unsigned map and for q8's signed one) the same symbol, and a
    process that loads both from the on-disk cache then links every call to the first it
    loaded: codes from another map. Named by their constants, two closures share a name
    only where they are the same function."""
    tag = hashlib.sha256(repr(key).encode()).hexdigest()[:12]

    def rename(function):
        function.__name__ = f"{function.__name__}_{tag}"
        function.__qualname__ = f"{function.__qualname__}_{tag}"
        return function
    return rename
