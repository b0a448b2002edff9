"""Muon on CUDA (kernels/muon_momentum.cu and kernels/muon_weight.cu, generated from
fusedopt/algorithms/muon.py; Newton-Schulz through the array library's batched matmul
between them, fusedopt/engine/orthogonal.py) run on the host (tests/cuda_host): against
the CPU backend bit for bit, against the float64 oracle, and the refusals.

Why bit for bit here: the passes are the CPU loop's float operations in the same order
(``fma`` where the rule says so), and on the host runtime the stacks are NumPy arrays, so
the transform is the same library call on the same values as the CPU backend's (NumPy's
matmul; torch's for torch's bfloat16 Newton-Schulz). On a GPU the products are cuBLAS's,
summed in another order: each entry of a product of inner dimension n is then within
2 gamma_n sum_i |a_i b_i| of the CPU's (gamma_n = n u / (1 - n u), u the unit roundoff of
the type the product is summed in), and that difference goes through the remaining products
of the iteration - a bound a GPU run (tests/test_gpu.py) would hold it to, not shown here.
"""

import numpy as np
import pytest
from test_muon import _oracle
from tolerances import VS_REFERENCE

import fusedopt

#: Two of one shape (one batched product for both), tall, wide, square, one row, and a
#: transposed (Fortran-ordered) param: sizes off the vector width.
SHAPES = [(24, 8), (24, 8), (13, 24), (13, 13), (1, 16)]
STEPS = 3


def _problem(seed, dtype, steps=STEPS):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params.append(np.asfortranarray(rng.standard_normal((7, 5)).astype(dtype)))
    shapes = [p.shape for p in params]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    for g in grads:
        g[-1] = np.asfortranarray(g[-1])
    return params, grads


def _run(backend, params, grads, **hp):
    params = [p.copy(order="A") for p in params]
    opt = fusedopt.Muon(backend=backend, **hp)
    for g in grads:
        opt.apply_gradients(list(zip(g, params)))
    return params, opt


CASES = [("keras", "float32", dict(learning_rate=0.02)),
         ("keras", "float64", dict(learning_rate=0.01, weight_decay=0.1, momentum=0.8,
                                   nesterov=False, ns_steps=3, rms_rate=None)),
         ("torch", "float32", dict(learning_rate=0.02, weight_decay=0.05, momentum=0.3)),
         ("torch", "float64", dict(learning_rate=0.02, nesterov=False,
                                   adjust_lr_fn="match_rms_adamw"))]


@pytest.mark.parametrize("convention, dtype, hp", CASES,
                         ids=[f"{c}-{d}-{i}" for i, (c, d, _) in enumerate(CASES)])
def test_steps_equal_the_cpu_and_match_the_oracle(host_cuda, convention, dtype, hp):
    """Params and momentum bit for bit against the CPU backend; the two passes one launch
    each a step for every tensor; the Keras convention against the float64 oracle (the torch
    one's bfloat16 Newton-Schulz is held to its oracle on the CPU: tests/test_muon.py)."""
    params, grads = _problem(41, dtype)
    ours, opt = _run("cuda", params, grads, convention=convention, **hp)
    cpu, cpu_opt = _run("cpu", params, grads, convention=convention, **hp)
    for a, b in zip(ours, cpu):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(opt._engine.states, cpu_opt._engine.states):
        np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(ours[0], params[0])
    names = [name.split("<")[0] for name, _, _ in host_cuda.launches]
    assert names == ["muon_momentum", "muon_weight"] * STEPS
    if convention == "keras":
        tolerance = dict(VS_REFERENCE[np.dtype(dtype).type])
        tolerance["rtol"] += 10 * float(np.finfo(dtype).eps)  # the decay rounded once a step
        for got, want in zip(ours, _oracle(params, grads, hp, convention)):
            np.testing.assert_allclose(got, want, **tolerance)


def test_bfloat16_params_equal_the_cpu(host_cuda):
    """torch's convention on bfloat16 params: the passes' 16-bit loads and stores and the
    bfloat16 Newton-Schulz, bit for bit against the CPU backend."""
    import ml_dtypes
    params, grads = _problem(42, np.float32, steps=2)
    params = [p.astype(ml_dtypes.bfloat16) for p in params]
    grads = [[g.astype(ml_dtypes.bfloat16) for g in step] for step in grads]
    hp = dict(convention="torch", learning_rate=0.02, state_dtype="bfloat16")
    ours, _ = _run("cuda", params, grads, **hp)
    cpu, _ = _run("cpu", params, grads, **hp)
    for a, b in zip(ours, cpu):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_a_loss_scaled_step_with_an_inf_changes_nothing(host_cuda):
    """Decided on the host (the transform takes the step's one row): an inf grad under a
    loss scale skips the step, params, momentum and the step count stay."""
    params, grads = _problem(43, np.float32, steps=1)
    opt = fusedopt.Muon(backend="cuda")
    opt.apply_gradients(list(zip(grads[0], params)))
    before = [p.copy() for p in params] + [s[0].copy() for s in opt._engine.states]
    bad = [g * 8.0 for g in grads[0]]
    bad[2][3, 4] = np.inf
    assert not opt._engine.step(bad, grad_scale=8.0) and opt._engine.iterations == 1
    for a, b in zip(list(params) + [s[0] for s in opt._engine.states], before):
        np.testing.assert_array_equal(a, b)
    assert opt._engine.step([g * 8.0 for g in grads[0]], grad_scale=8.0)


#: Quantized momentum: q8 codes of 256 elements a block, 24 x 40 = 960 (three blocks and a
#: partial one) twice (one stack), a tall 40 x 13 (520: a partial block, transposed for
#: Newton-Schulz, and Fortran-ordered: its u a transposed row of its stack), and 7 x 5
#: under MIN_QUANTIZED, which keeps float32 state (a launch group of its own, the float
#: passes).
QUANTIZED_SHAPES = [(24, 40), (24, 40), (40, 13), (7, 5)]
MIN_QUANTIZED = 256


def _quantized_run(backend, convention, nesterov, fmt):
    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.engine.engine import Engine
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(s).astype(np.float32) for s in QUANTIZED_SHAPES]
    params[2] = np.asfortranarray(params[2])
    engine = Engine(REGISTRY["muon"], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=MIN_QUANTIZED)
    engine.add_group(dict(learning_rate=0.02, weight_decay=0.01, momentum=0.9,
                          nesterov=nesterov))
    engine.add_params(params)
    for _ in range(STEPS):
        # grads of two scales: a block's small values sit between the map's entries
        grads = [(rng.standard_normal(s) * rng.choice([0.01, 1.0], s)).astype(np.float32)
                 for s in QUANTIZED_SHAPES]
        grads[2] = np.asfortranarray(grads[2])
        engine.step(grads)
    return params, [np.asarray(s[0]) for s in engine.states]


QUANTIZED_CASES = [("keras", True, "q8"), ("keras", False, "q8"), ("torch", True, "q8"),
                   ("torch", False, "q8"), ("torch", True, "q4")]


@pytest.mark.parametrize("convention, nesterov, fmt", QUANTIZED_CASES,
                         ids=[f"{c}-nesterov{int(n)}-{f}" for c, n, f in QUANTIZED_CASES])
def test_quantized_momentum_gives_the_cpu_bits(host_cuda, convention, nesterov, fmt):
    """float32 params with q8 (and q4) momentum: params bit for bit against the CPU backend
    (the transform the same NumPy / torch call on the same u, as above), and m's codes and
    absmax, the momentum pass's output, byte for byte; the small matrix keeps float32
    state. A step is the quantized momentum launch, the float passes of the small matrix's
    group, and one weight launch per group."""
    ours, ours_m = _quantized_run("cuda", convention, nesterov, fmt)
    cpu, cpu_m = _quantized_run("cpu", convention, nesterov, fmt)
    for k, (a, b) in enumerate(zip(ours, cpu)):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=f"p {k}")
    for k, (a, b) in enumerate(zip(ours_m, cpu_m)):
        assert a.dtype == (np.float32 if k == len(QUANTIZED_SHAPES) - 1 else np.uint8)
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=f"m {k}")
    names = sorted(name.split("<")[0] for name, _, _ in host_cuda.launches)
    assert names == sorted(["muon_momentum_quantized", "muon_momentum", "muon_weight",
                            "muon_weight"] * STEPS)


@pytest.mark.parametrize("state_dtype, dtype, shape, match", [
    ("q8", "bfloat16", (4, 8), r"state_dtype='q8', bfloat16 params has no CUDA kernel yet "
                               r"\(its quantized CUDA kernels take float32 params\).*"
                               r"backend='cpu'.*state_dtype=None"),
    (None, "float32", (8,), r"2-D params only.*shape \(8,\)")], ids=["q8-bfloat16", "1-D"])
def test_refusals_name_the_fix_and_change_nothing(host_cuda, state_dtype, dtype, shape,
                                                  match):
    import ml_dtypes
    dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    p = np.ones(shape, dtype)
    opt = fusedopt.Muon(backend="cuda", state_dtype=state_dtype, min_quantized_size=0)
    with pytest.raises(ValueError, match=match):
        opt.apply_gradients([(np.ones(shape, dtype), p)])
    assert (p == 1).all() and not host_cuda.launches
