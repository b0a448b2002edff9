"""The CPU loop's two ways through an all-16-bit storage (fusedopt/backends/cpu/loop.py): elements
two to a 32-bit word when every operand's address is 4-byte aligned, one at a time
otherwise (and for an odd tensor's last element). Both must write the same bits, the
random bits of stochastic rounding included, in every mode that takes them in pairs."""

import numpy as np
import pytest

import fusedopt
from fusedopt.memory.storage import numpy_dtype

N = 1001  # odd: the paired loop leaves its last element to the other path

#: name -> (param dtype, optimizer arguments); every operand 16-bit.
CASES = {
    "bf16, bf16 state": ("bfloat16", dict(state_dtype="bfloat16")),
    "bf16, bf16 state, stochastic": ("bfloat16", dict(state_dtype="bfloat16",
                                                      stochastic_rounding=True, seed=7)),
    "bf16, bf16 state, kahan": ("bfloat16", dict(state_dtype="bfloat16",
                                                 kahan_summation=True)),
    # A remainder keeps float32 state, so only a stateless rule is all 16-bit with it.
    "bf16, remainder, no state": ("bfloat16", dict(master_weights="remainder")),
}

OPTIMIZERS = {"adam": fusedopt.Adam, "sgd": lambda **kw: fusedopt.SGD(momentum=0.9, **kw),
              "plain sgd": fusedopt.SGD}

PAIRS = [(case, optimizer) for case in CASES for optimizer in OPTIMIZERS
         if ("no state" in case) == (optimizer == "plain sgd")]


def _values(dtype, seed):
    rng = np.random.default_rng(seed)
    p = (rng.standard_normal(N) * 0.5).astype(numpy_dtype(dtype))
    g = (rng.standard_normal((4, N)) * 0.01).astype(numpy_dtype(dtype))
    g[1, 3] = np.inf  # a clipped-to-limit and a NaN-carrying element, both paths alike
    g[2, 10] = np.nan
    return p, g


def _misaligned(values):
    """A copy of ``values`` whose first element sits 2 bytes past a 4-byte boundary."""
    buffer = np.zeros(values.size + 1, values.dtype)
    view = buffer[1:]
    assert view.__array_interface__["data"][0] % 4 == 2
    view[:] = values
    return view


def _run(make, kwargs, p, grads):
    opt = make(learning_rate=1e-2, backend="cpu", clipvalue=1.0, **kwargs)
    for g in grads:
        opt.apply_gradients([(g, p)])
    return p, opt


@pytest.mark.parametrize("case, optimizer", PAIRS)
@pytest.mark.parametrize("shifted", ["param", "grad"])
def test_paired_and_single_element_paths_write_the_same_bits(case, optimizer, shifted):
    dtype, kwargs = CASES[case]
    p, grads = _values(dtype, 0)
    aligned_p, _ = _run(OPTIMIZERS[optimizer], kwargs, p.copy(), [g.copy() for g in grads])
    if shifted == "param":
        other_p = _misaligned(p)
        other_grads = [g.copy() for g in grads]
    else:
        other_p = p.copy()
        other_grads = [_misaligned(g) for g in grads]
    other_p, _ = _run(OPTIMIZERS[optimizer], kwargs, other_p, other_grads)
    np.testing.assert_array_equal(aligned_p.view(np.uint16), other_p.view(np.uint16))
    assert not np.array_equal(aligned_p.view(np.uint16), p.view(np.uint16)), "nothing moved"


def test_the_two_paths_keep_the_same_state():
    """Adam's bf16 moments, stepped on aligned and misaligned params, match bit for bit."""
    dtype, kwargs = CASES["bf16, bf16 state, stochastic"]
    p, grads = _values(dtype, 1)
    _, aligned = _run(fusedopt.Adam, kwargs, p.copy(), list(grads))
    _, shifted = _run(fusedopt.Adam, kwargs, _misaligned(p), list(grads))
    for a, b in zip(aligned.variables[1:], shifted.variables[1:]):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.itemsize == 2:
            a, b = a.view(np.uint16), b.view(np.uint16)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["bf16, bf16 state", "bf16, bf16 state, stochastic"])
def test_a_clip_that_clips_nothing_gives_the_unclipped_bits(case):
    """A clipvalue no grad reaches runs the clamping variant (scale 1, a finite limit);
    no clipping runs the one without the clamp: the same bits, the NaN grad included."""
    dtype, kwargs = CASES[case]
    p, grads = _values(dtype, 2)
    grads[1, 3] = 1.0  # keep the grads finite: a finite limit would clamp an inf
    runs = []
    for clip in (dict(clipvalue=1e30), {}):
        q = p.copy()
        opt = fusedopt.Adam(learning_rate=1e-2, backend="cpu", **clip, **kwargs)
        for g in grads:
            opt.apply_gradients([(g, q)])
        runs.append(q.view(np.uint16))
    np.testing.assert_array_equal(*runs)
