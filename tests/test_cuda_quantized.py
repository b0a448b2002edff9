"""q8 / q4 state on the CUDA backend (kernels/quantized.cuh), run on the host (tests/cuda_host).

- The CUDA step gives the CPU backend's bits - params, codes and absmax, codes rounded to
  nearest and (bfloat16 params, ``stochastic_rounding``) stochastically - over several
  steps, for several params of different sizes in one launch: a block whose absmax stays 0,
  a partial last block, a block that a NaN makes NaN, a param below
  ``min_quantized_size`` keeping float32 state (its own launch), chunks of several blocks
  and warps without a block in a launch's last round. The CPU backend's quantized step is
  itself held to the float64 oracle (tests/test_quantized_state.py).
- A quantized step the CUDA backend has no kernel for is refused before anything changes,
  naming what is missing and backend='cpu'.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import quantized
from fusedopt.engine.engine import Engine
from fusedopt.memory import quant

#: Quantized at min_quantized_size 256: 5000 (a partial last block), 300, 1031 and 37 x 53;
#: 100 keeps float32 state.
SHAPES = ((5000,), (100,), (300,), (1031,), (37, 53))
MIN_SIZE = 256
STEPS = 3
#: The grads of param 0's first block stay 0 (its absmax stays 0); element NAN of param 0
#: gets a NaN grad at the last step (its block's absmax becomes NaN).
NAN = 600

CASES = [  # (name, convention, hyperparameters, param dtype, constructor options)
    ("adam", "keras", dict(learning_rate=1e-2), np.float32, {}),
    ("adamw", "torch", dict(learning_rate=1e-2, weight_decay=0.1, amsgrad=True),
     ml_dtypes.bfloat16, dict(stochastic_rounding=True)),  # params and codes
    ("adamw", "torch", dict(learning_rate=1e-2, weight_decay=0.01), np.float32, {}),
]


def _run(backend, name, convention, hp, dtype, options, fmt):
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    engine = Engine(REGISTRY[name], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=MIN_SIZE, seed=3, **options)
    engine.add_group(hp)
    engine.add_params(params)
    for step in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        grads[0][:quant.FORMATS[fmt].block] = 0.0
        if step == STEPS - 1:
            grads[0][NAN] = np.nan
        engine.step([g.astype(dtype) for g in grads])
    return params, [[np.asarray(s) for s in slots] for slots in engine.states]


#: Both formats of the first case; q8 of the second (q4's stochastic codes are the same
#: code path between other tables: the sanitizers and the compile gates cover them); the
#: third in q8-bitsandbytes, whose decision points are not the midpoints (the variant
#: tests/test_quantized_peers.py steps on the CPU).
RUNS = [(*CASES[0], "q8"), (*CASES[0], "q4"), (*CASES[1], "q8"),
        (*CASES[2], "q8-bitsandbytes")]


@pytest.mark.parametrize("name, convention, hp, dtype, options, fmt", RUNS,
                         ids=[f"{r[0]}-{r[-1]}" for r in RUNS])
def test_cuda_step_gives_the_cpu_bits(host_cuda, monkeypatch, name, convention, hp, dtype,
                                      options, fmt):
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)  # chunks of several blocks
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 96)  # 3 warps: idle ones at the end
    cuda_params, cuda_states = _run("cuda", name, convention, hp, dtype, options, fmt)
    cpu_params, cpu_states = _run("cpu", name, convention, hp, dtype, options, fmt)
    f = quant.FORMATS[fmt]
    for t, shape in enumerate(SHAPES):
        np.testing.assert_array_equal(cuda_params[t].view(np.uint8),
                                      cpu_params[t].view(np.uint8), err_msg=f"param {t}")
        for k, (a, b) in enumerate(zip(cuda_states[t], cpu_states[t])):
            wanted = np.uint8 if np.prod(shape) >= MIN_SIZE else np.float32
            assert a.dtype == wanted, (t, k, a.dtype)
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8),
                                          err_msg=f"param {t} slot {k}")
    for slot in cuda_states[0]:  # the cases the test is about did happen
        _, absmax = quant.codes_and_scales(slot, int(np.prod(SHAPES[0])), fmt)
        assert absmax[0] == 0 and np.isnan(absmax[NAN // f.block])
        assert np.all(np.isfinite(np.delete(absmax, NAN // f.block)))
    launched = [n for n, _, _ in host_cuda.launches if n.startswith("adam_quantized<")]
    assert len(launched) == STEPS and len(host_cuda.launches) == 2 * STEPS  # float32 apart
    assert all(block == (96, 1, 1) for _, _, block in host_cuda.launches)


REFUSED = [  # (optimizer, constructor options, what the message names)
    ("lamb", {}, "per-tensor reductions"),
    ("adagrad", {}, "adam family only"),
    ("adam", dict(master_weights=True), "master_weights=True"),
    ("adam", dict(kahan_summation=True), "kahan_summation=True"),
    ("adam", dict(float16=True), "float16 params"),
]


@pytest.mark.parametrize("fmt", quant.QUANTIZED)
@pytest.mark.parametrize("name, options, named", REFUSED, ids=[f"{r[0]}-{r[2][:10]}"
                                                               for r in REFUSED])
def test_a_step_without_a_kernel_is_refused_and_changes_nothing(cuda_cache_dir, name,
                                                                options, named, fmt):
    from cuda_host import HostRuntime

    from fusedopt.backends.cuda import runtime
    rng = np.random.default_rng(1)
    options = dict(options)
    dtype = np.float16 if options.pop("float16", False) else ml_dtypes.bfloat16
    p = rng.standard_normal(1000).astype(dtype)
    before = p.copy()
    previous = runtime.install(HostRuntime(cuda_cache_dir / "host"))
    try:
        engine = Engine(REGISTRY[name], "keras", backend="cuda", state_dtype=fmt,
                        min_quantized_size=0, **options)
        engine.add_group(dict(learning_rate=0.1))
        engine.add_params([p])
        states = [np.asarray(s).copy() for s in engine.states[0]]
        with pytest.raises(ValueError, match=rf"{fmt}.*{named}.*backend='cpu'") as info:
            engine.step([np.ones(1000, p.dtype)])
        assert "no CUDA kernel yet" in str(info.value)
    finally:
        runtime.install(previous)
    assert np.array_equal(p.view(np.uint16), before.view(np.uint16))  # the param unchanged
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(states, engine.states[0]))


def test_every_quantized_entry_point_is_a_gate_entry_point():
    """What the runtime can request of a quantized family is what the gates compile."""
    from fusedopt.backends.cuda import launch
    for spec in REGISTRY.values():
        for _, _, entry in quantized.entries(spec):
            assert entry in launch.all_entry_points()[quantized.family(spec.kernel)]
    assert {quantized.family(s.kernel) for s in REGISTRY.values() if quantized.covers(s)}
