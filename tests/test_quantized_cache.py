"""Numba's on-disk cache and the quantized span.

The quantized span (fusedopt/backends/cpu/quantized.py) calls closures compiled as
functions of their own: their symbols are their names, argument types and a per-process
counter. A cache written by two processes held two different ``encode`` functions under one
symbol (RMSprop's q4 with the unsigned map, Rprop's with the signed one); a process that
loaded both linked Rprop's calls to RMSprop's, one code off. The closures are now named by
what they close over, and every variant's type carries a digest of the sources a loop
inlines, so a change to any of them compiles afresh.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import fusedopt
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.constants import STOCHASTIC
from fusedopt.backends.cpu import codes, storage, variant

ROOT = Path(fusedopt.__file__).resolve().parent


def _closures(name: str, flags: tuple, code: int, mode: int = 0):
    spec = REGISTRY[name]
    v = variant.specialize(spec, flags, (storage.F32, storage.F32, code), mode)
    decode, encode = codes.block_functions(v._numba_type_)
    return decode.py_func.__qualname__, encode.py_func.__qualname__


def test_closures_with_other_maps_have_other_names():
    names = {
        "rmsprop q4": _closures("rmsprop", (0, 0, 0), storage.Q4),
        "rmsprop q8": _closures("rmsprop", (0, 0, 0), storage.Q8),
        "rprop q4": _closures("rprop", (1,), storage.Q4),
        "rmsprop q4 stochastic": _closures("rmsprop", (0, 0, 0), storage.Q4, STOCHASTIC),
    }
    encodes = [e for _, e in names.values()]
    decodes = [d for d, _ in names.values()]
    assert len(set(encodes)) == len(encodes), names
    assert len(set(decodes)) == len(decodes), names


_PROBE = ("from fusedopt.backends.cpu import codes, storage, variant;"
          "from fusedopt.algorithms.registry import REGISTRY;"
          "v = variant.specialize(REGISTRY['rprop'], (1,), (0, 0, storage.Q4));"
          "print(variant.SOURCES, codes.block_functions(v._numba_type_)[1]"
          ".py_func.__qualname__)")


def _probe(tree: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tree, check=True,
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                              "NUMBA_DISABLE_JIT": "0"})
    return out.stdout.split()


def test_names_and_digest_are_the_same_in_every_process_and_follow_the_source(tmp_path):
    """The same tree gives the same names in another process (so the cache is found);
    a copy whose fusedopt/memory/quant.py differs by one comment gets another digest (so
    a loop cached from the old source is not served)."""
    here = _probe(ROOT.parent)
    assert here == _probe(ROOT.parent)
    copy = tmp_path / "tree"
    shutil.copytree(ROOT, copy / "fusedopt", ignore=shutil.ignore_patterns("__pycache__"))
    same = _probe(copy)
    assert same == here
    with open(copy / "fusedopt" / "memory" / "quant.py", "a") as f:
        f.write("# changed\n")
    changed = _probe(copy)
    assert changed[0] != here[0]
    assert variant.SOURCES in str(variant.specialize(
        REGISTRY["rprop"], (1,), (0, 0, storage.Q4))._numba_type_)


def test_a_type_from_an_index_of_other_sources_never_matches():
    """A variant's type unpickled from a cache index keeps the digest it was made under (an
    index written before the digest was kept has none): either differs from this tree's,
    so the loop cached under it is not served (a storage code that meant another map would
    otherwise decode with it)."""
    here = variant.specialize(REGISTRY["rprop"], (1,), (0, 0, storage.Q8))._numba_type_
    assert pickle.loads(pickle.dumps(here)) == here
    rebuild, (reconstructor, args, state) = here.__reduce__()  # what the index holds
    other = rebuild(reconstructor, args, {**state, "sources": "0" * 12})
    older = rebuild(reconstructor, args, {k: v for k, v in state.items() if k != "sources"})
    assert other != here and older != here
    assert here.sources == variant.SOURCES  # unpickling interns: nothing changed here
