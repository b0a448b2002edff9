"""fusedopt.torch's thread set-up (fusedopt/torch/_threads.py), each case in a fresh process:
imported before torch, Numba's OpenMP runtime is the one torch binds to (one runtime);
imported after, two are loaded (and reported); the user's own settings are left alone."""

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json, os, sys
if {torch_first}:
    import torch
import fusedopt.torch as ft
import torch
m = torch.nn.Linear(64, 64)
opt = ft.Adam(m.parameters())
m(torch.randn(8, 64)).sum().backward()
opt.step()
import numba
print(json.dumps(dict(ft.THREADS, now=ft._threads.openmp_runtimes(),
                      numba=numba.get_num_threads(), torch=torch.get_num_threads())))
"""


def _probe(torch_first: bool, **env) -> dict:
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS")}
    run_env.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE.format(torch_first=torch_first)],
                         env=run_env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_imported_before_torch_both_share_one_openmp_runtime():
    seen = _probe(torch_first=False)
    assert seen["started_before_torch"] == "omp"
    assert len(seen["now"]) == 1, seen["now"]
    assert seen["numba"] == seen["torch"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_imported_after_torch_the_two_runtimes_are_reported():
    seen = _probe(torch_first=True)
    assert seen["torch_was_imported"] and "started_before_torch" not in seen
    assert len(seen["openmp_runtimes"]) == 2, seen["openmp_runtimes"]


def test_the_users_threading_choices_are_left_alone():
    seen = _probe(torch_first=False, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="1")
    assert "started_before_torch" not in seen and "numba_threads" not in seen
    assert seen["numba"] == 1
