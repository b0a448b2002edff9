"""Where compiled kernels (NVRTC cubins, SASS listings, host libraries) are kept.

Compiling every family for every architecture takes seconds each; keeping the results
between sessions, under hashes of everything that goes into them, keeps the suite quick
without ever reusing a stale artifact. ``FUSEDOPT_TEST_CACHE`` picks the folder; by default
it is the user's cache folder, else a per-session temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from fusedopt.backends.cpu._cache import _writable


def cache_root(fallback) -> Path:
    """The artifact folder; ``fallback()`` makes a temporary one if no cache is writable."""
    chosen = os.environ.get("FUSEDOPT_TEST_CACHE")
    if chosen:
        folder = Path(chosen)
    else:
        home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        folder = home / "fusedopt-tests"
    return folder if _writable(folder) else Path(fallback())
