"""LAMB and StableAdamW over q8 / q4 state on the CUDA backend, run on the host
(tests/cuda_host): the reduction phase over the codes (kernels/quantized_reduce.cuh,
kernels/<family>_reduce_quantized.cu) and the element pass that reads its per-tensor
scalars (kernels/<family>_quantized.cu).

Over several steps of two quantized params of different sizes in one launch (one with a
partial last block) and, beside float32 params, one below ``min_quantized_size`` keeping
float32 state (a launch of the float kernels), the CUDA step gives the CPU backend's bits:
params, codes and absmax. Each family beside float32 params in q8, LAMB's in q4 too; and
beside bfloat16 params (and grads), which the reductions read and the element pass stores:
LAMB's in q8 rounded stochastically (param and codes), StableAdamW's in q4 rounded to
nearest. The reductions read a bfloat16 param the same way in both modes (the mode is the
element pass's store, whose code is every family's: tests/test_cuda_quantized.py), so one
mode per family. Each step's per-tensor sums are within tests/test_cuda_reductions.py's
bound of the CPU's (the same float64 terms added in another order: 2 (n - 1) u of each
other, relatively), and the launches are the quantized reduction, its combine and the
quantized step, for the storage asked. The CPU backend's quantized reductions are held to
the float64 oracle in tests/test_reductions_quantized.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from test_cuda_quantized import asked_storage

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

RUNS = [  # (optimizer, convention, hyperparameters, format, param dtype, options)
    ("lamb", "torch", dict(learning_rate=1e-2, weight_decay=0.1), "q8", np.float32, {}),
    ("stableadamw", "keras", dict(learning_rate=1e-2, weight_decay=0.1), "q8", np.float32,
     {}),
    # q4's codes, two to a byte, read by the reduction too; Keras' weight decay
    ("lamb", "keras", dict(learning_rate=1e-2, weight_decay=0.1), "q4", np.float32, {}),
    # bfloat16 params (and grads), read by the reductions and stored by the element pass:
    # rounded stochastically with the codes, and (StableAdamW, in q4) to nearest
    ("lamb", "torch", dict(learning_rate=1e-2, weight_decay=0.1), "q8", ml_dtypes.bfloat16,
     dict(stochastic_rounding=True)),
    ("stableadamw", "torch", dict(learning_rate=1e-2, weight_decay=0.1), "q4",
     ml_dtypes.bfloat16, {}),
]


def _shapes(dtype):
    """:data:`SHAPES`, beside bfloat16 params without the one keeping float32 state: its
    launch is the float kernels' (one launch group, as the float32 runs show), which
    tests/test_storage_entries.py runs on the host for every bfloat16 entry point, and its
    CPU compile would cost the suite seconds a run."""
    return SHAPES if dtype == np.float32 else tuple(s for s in SHAPES
                                                    if np.prod(s) >= MIN_SIZE)


def _recorded(monkeypatch, module, name):
    """Patch ``module.name`` to record host copies of what it returns."""
    real, seen = getattr(module, name), []

    def record(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(np.array(out))
        return out
    monkeypatch.setattr(module, name, record)
    return seen


def _run(backend, name, convention, hp, fmt, dtype, options):
    rng = np.random.default_rng(8)
    shapes = _shapes(dtype)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    engine = Engine(REGISTRY[name], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=MIN_SIZE, seed=3, **options)
    engine.add_group(hp)
    engine.add_params(params)
    for step in range(STEPS):
        engine.step([(rng.standard_normal(s) * 10.0 ** (t - 1)).astype(dtype)
                     for t, s in enumerate(shapes)])
    return params, [[np.asarray(s) for s in slots] for slots in engine.states]


@pytest.mark.parametrize("name, convention, hp, fmt, dtype, options", RUNS,
                         ids=["-".join([r[0], np.dtype(r[4]).name, *r[5], r[3]])
                              for r in RUNS])
def test_cuda_step_gives_the_cpu_bits(host_cuda, monkeypatch, name, convention, hp, fmt,
                                      dtype, options):
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)  # chunks of several blocks
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 96)
    cpu_sums = _recorded(monkeypatch, cpu_backend, "reduce")
    cuda_sums = _recorded(monkeypatch, launch, "reduce")
    got = _run("cuda", name, convention, hp, fmt, dtype, options)
    wanted = _run("cpu", name, convention, hp, fmt, dtype, options)
    shapes = _shapes(dtype)
    for t, shape in enumerate(shapes):
        assert got[0][t].dtype == wanted[0][t].dtype == dtype
        np.testing.assert_array_equal(got[0][t].view(np.uint8), wanted[0][t].view(np.uint8),
                                      err_msg=f"param {t}")
        wanted_state = np.uint8 if np.prod(shape) >= MIN_SIZE else np.float32
        assert len(got[1][t]) == len(wanted[1][t]) == 2
        for k, (a, b) in enumerate(zip(got[1][t], wanted[1][t])):
            assert a.dtype == wanted_state, (t, k, a.dtype)
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8),
                                          err_msg=f"param {t} slot {k}")
    # Each step's sums per launch group (quantized, then float32 state where a param keeps
    # it; the CPU's in the same order), within the order bound; not all zero.
    groups = len({np.prod(s) >= MIN_SIZE for s in shapes})
    assert len(cuda_sums) == len(cpu_sums) == groups * STEPS
    for ours, theirs in zip(cuda_sums, cpu_sums):
        theirs = theirs[:ours.shape[0], :ours.shape[1]]
        assert ours.shape == theirs.shape and (ours > 0).all()
        quantized_group = ours.shape[1] == 2
        n = np.array([np.prod(s) for s in shapes if (np.prod(s) >= MIN_SIZE) == quantized_group],
                     np.float64)
        bound = 2 * np.maximum(n - 1, 0) * U * np.maximum(np.abs(ours), np.abs(theirs))
        assert (np.abs(ours - theirs) <= bound).all(), (ours, theirs, bound)
    names = [n for n, _, _ in host_cuda.launches]
    spec = REGISTRY[name]
    for family in (quantized.family(spec.reduce_kernel), quantized.family(spec.kernel)):
        launched = [n for n in names if n.startswith(family + "<")]
        assert len(launched) == STEPS, (family, names)
        assert {launch.storage_args(n) for n in launched} == {
            asked_storage(dtype, options, fmt)}, launched  # the storage the run asked for
