"""LAMB and StableAdamW over q8 state on the CUDA backend, run on the host (tests/cuda_host):
the reduction phase over the codes (kernels/quantized_reduce.cuh,
kernels/<family>_reduce_quantized.cu) and the element pass that reads its per-tensor
scalars (kernels/<family>_quantized.cu).

Over several steps of two quantized params of different sizes in one launch (one with a
partial last block) and one below ``min_quantized_size`` keeping float32 state (a launch
of the float kernels), the CUDA step gives the CPU backend's bits: params, codes and
absmax. Each step's per-tensor sums are within tests/test_cuda_reductions.py's bound of the
CPU's (the same float64 terms added in another order: 2 (n - 1) u of each other,
relatively), and the launches are the quantized reduction, its combine and the quantized
step. The CPU backend's quantized reductions are held to the float64 oracle in
tests/test_reductions_quantized.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cpu import backend as cpu_backend
from fusedopt.backends.cuda import launch, quantized
from fusedopt.engine.engine import Engine

#: Quantized at min_quantized_size 256: 5000 (a partial last block: of 136 elements in q8,
#: 8 in q4) and 1031 (of 7); 100 keeps float32 state.
SHAPES = ((5000,), (100,), (1031,))
MIN_SIZE = 256
STEPS = 3
U = 2.0**-53

RUNS = [  # (optimizer, convention, hyperparameters, format)
    ("lamb", "torch", dict(learning_rate=1e-2, weight_decay=0.1), "q8"),
    ("stableadamw", "keras", dict(learning_rate=1e-2, weight_decay=0.1), "q8"),
    # q4's codes, two to a byte, read by the reduction too; Keras' weight decay
    ("lamb", "keras", dict(learning_rate=1e-2, weight_decay=0.1), "q4"),
]


def _recorded(monkeypatch, module, name):
    """Patch ``module.name`` to record host copies of what it returns."""
    real, seen = getattr(module, name), []

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(np.array(out))
        return out
    monkeypatch.setattr(module, name, record)
    return seen


def _run(backend, name, convention, hp, fmt):
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    engine = Engine(REGISTRY[name], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=MIN_SIZE)
    engine.add_group(hp)
    engine.add_params(params)
    for step in range(STEPS):
        engine.step([rng.standard_normal(s).astype(np.float32) * 10.0 ** (t - 1)
                     for t, s in enumerate(SHAPES)])
    return params, [[np.asarray(s) for s in slots] for slots in engine.states]


@pytest.mark.parametrize("name, convention, hp, fmt", RUNS,
                         ids=[f"{r[0]}-{r[-1]}" for r in RUNS])
def test_cuda_step_gives_the_cpu_bits(host_cuda, monkeypatch, name, convention, hp, fmt):
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)  # chunks of several blocks
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 96)
    cpu_sums = _recorded(monkeypatch, cpu_backend, "reduce")
    cuda_sums = _recorded(monkeypatch, launch, "reduce")
    got = _run("cuda", name, convention, hp, fmt)
    wanted = _run("cpu", name, convention, hp, fmt)
    for t, shape in enumerate(SHAPES):
        np.testing.assert_array_equal(got[0][t].view(np.uint32), wanted[0][t].view(np.uint32),
                                      err_msg=f"param {t}")
        wanted_state = np.uint8 if np.prod(shape) >= MIN_SIZE else np.float32
        assert len(got[1][t]) == len(wanted[1][t]) == 2
        for k, (a, b) in enumerate(zip(got[1][t], wanted[1][t])):
            assert a.dtype == wanted_state, (t, k, a.dtype)
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8),
                                          err_msg=f"param {t} slot {k}")
    # Each step's sums per launch group (quantized, then float32 state; the CPU's in the
    # same order), within the order bound; not all zero.
    assert len(cuda_sums) == len(cpu_sums) == 2 * STEPS
    for ours, theirs in zip(cuda_sums, cpu_sums):
        theirs = theirs[:ours.shape[0], :ours.shape[1]]
        assert ours.shape == theirs.shape and (ours > 0).all()
        quantized_group = ours.shape[1] == 2
        n = np.array([np.prod(s) for s in SHAPES if (np.prod(s) >= MIN_SIZE) == quantized_group],
                     np.float64)
        bound = 2 * np.maximum(n - 1, 0) * U * np.maximum(np.abs(ours), np.abs(theirs))
        assert (np.abs(ours - theirs) <= bound).all(), (ours, theirs, bound)
    names = [n for n, _, _ in host_cuda.launches]
    spec = REGISTRY[name]
    for family in (quantized.family(spec.reduce_kernel), quantized.family(spec.kernel)):
        assert sum(n.startswith(family + "<") for n in names) == STEPS, (family, names)
