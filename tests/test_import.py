"""``import fusedopt`` works with no CuPy, no GPU, and nowhere to write a Numba cache."""

import subprocess
import sys
import textwrap

STEP = textwrap.dedent("""
    import sys
    import numpy as np
    import fusedopt
    from fusedopt.backends.cpu import _cache
    w = np.ones(5, np.float32)
    fusedopt.Adam(learning_rate=0.5).apply_gradients([(np.ones(5, np.float32), w)])
    assert np.allclose(w, 0.5), w
    print("cache", _cache.JIT_OPTIONS["cache"], sys.modules.get("cupy") is not None)
""")


def _run(code, **env):
    import os
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_import_without_cupy():
    """CuPy is blocked outright: import and a CPU step must not need it."""
    blocked = "import sys; sys.modules['cupy'] = None\n" + STEP
    out = _run(blocked)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"  # cupy was never imported


def test_unwritable_numba_cache_turns_caching_off():
    """A cache folder that cannot be created (even by root) must not break the first step."""
    out = _run(STEP, NUMBA_CACHE_DIR="/dev/null/numba-cache")
    assert out.returncode == 0, out.stderr
    assert "cache False" in out.stdout
