"""Stochastic rounding's helpers: the random words and the rounding, on every backend.

- The random words (kernels/random_bits.cuh) of the CPU backend (fusedopt/backends/cpu/random_bits.py),
  the CUDA host build and the unfused backend (fusedopt/backends/rounding.py) equal the documented
  formula, computed here with Python integers.
- The stochastic rounding of the dense float32 sample of tests/storage_patterns.py, with
  the same random words, has the same bits on the three backends, and every result is one
  of the two neighbours of its input (NaN stays NaN, inf stays inf).
- Unbiased, through a whole step: one SGD step whose exact float32 result x is not a
  16-bit value, over 10^6 elements of one tensor (each element draws its own bits): the
  share rounded up is within Z z-scores of the distance (x - lo) / (hi - lo), computed here
  in float64 from x alone, and every value is lo or hi, so the mean converges to x.
  Magnitudes: normal, negative, subnormal (of the 16-bit type), just below the largest
  finite value and past it, where hi is inf (2^128 for bfloat16, 65536 for float16 stand in
  for it): such a value becomes inf with probability proportional to its distance from the
  largest finite value. The CUDA host execution and the unfused backend give the CPU's bits.
"""

import math

import numpy as np
import pytest
import storage_patterns as pat
from cuda_host import HostRuntime, storage_probe
from numba import njit

from fusedopt import SGD
from fusedopt.backends import rounding as _rounding
from fusedopt.backends.cpu import random_bits, storage

DTYPES = {"bfloat16": pat.BF16, "float16": np.float16}
CODES = {"bfloat16": storage.BF16, "float16": storage.F16}

#: z-score bound of the share rounded up (fixed seed: the outcome is deterministic; a
#: correct generator lands outside it with probability below 1e-5 per case).
Z = 4.5
DRAWS = 1_000_000


@pytest.fixture(scope="module")
def host_probes(cuda_cache_dir):
    host = HostRuntime(cuda_cache_dir / "host", sources={"storage_probe": storage_probe.text()})
    module = host.module("storage_probe", storage_probe.NAMES)

    def call(name, *args):
        module.get_function(name)(storage_probe.GRID, storage_probe.BLOCK, args)
    return call


# --- the random words -------------------------------------------------------------------

def _mix(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & m
    x ^= x >> 15
    x = (x * 0x735A2D97) & m
    return x ^ (x >> 15)


def _formula(seed, position, step, array, indices):
    base = _mix(_mix(_mix(seed ^ 0x9E3779B9) ^ (step & 0xFFFFFFFF)) ^ position)
    salt = (array * 0x9E3779B9) & 0xFFFFFFFF

    def bits(element):
        return element if array == 0 else _mix(element ^ salt)
    return np.array([bits(_mix(_mix(base ^ (i >> 32)) ^ (i & 0xFFFFFFFF))) for i in indices],
                    np.uint32)


def _cpu_words(stream, step, array, n):
    stream_base, span_key = random_bits.stream_base, random_bits.span_key
    element_hash, bits = random_bits.element_hash, random_bits.ARRAY_BITS[array]

    @njit
    def run(stream, step, n):
        key = span_key(stream_base(stream, step), np.int64(0))
        out = np.empty(n, np.uint32)
        for i in range(n):
            out[i] = bits(element_hash(key, np.int64(i)))
        return out
    return run(stream, step, n)


KEYS = [(0, 0, 1, 0), (7, 3, 12345, 2), (2**32 - 1, 2**31 + 5, 2**33 + 9, 3)]


@pytest.mark.parametrize("backend", ["cpu", "cuda", "unfused"])
def test_random_words_are_the_formula(backend, request):
    n = 3000
    for seed, position, step, array in KEYS:
        stream = int(np.array([(seed << 32) | position], np.uint64).view(np.int64)[0])
        expected = _formula(seed, position, step, array, range(n))
        if backend == "cpu":
            got = _cpu_words(np.int64(stream), np.int64(step), array, n)
        elif backend == "cuda":
            got = np.zeros(n, np.uint32)
            request.getfixturevalue("host_probes")(
                "probe_random_bits", np.int64(stream), np.int64(step), np.int32(array), got,
                np.int64(n))
        else:
            base = _rounding.stream_base(stream, step)
            got = _rounding.array_bits(_rounding.element_hashes(np, base, n), array)
        assert np.array_equal(got, expected), f"{backend}: key {(seed, position, step, array)}"
    # the high half of the element index is part of the key
    assert not np.array_equal(_formula(1, 2, 3, 0, [5]), _formula(1, 2, 3, 0, [5 + 2**32]))


def test_random_words_look_uniform():
    """Each bit of the words of 10^6 consecutive elements is set half the time, and the top
    16 bits (what a bfloat16 store uses) fill 256 bins evenly (chi-squared)."""
    words = _rounding.array_bits(_rounding.element_hashes(np, _rounding.stream_base(0, 1),
                                                          DRAWS), 0)
    ones = np.array([np.count_nonzero(words & np.uint32(1 << b)) for b in range(32)])
    assert np.all(np.abs(ones - DRAWS / 2) <= Z * math.sqrt(DRAWS / 4))
    counts = np.bincount(words >> np.uint32(24), minlength=256)
    chi2 = float(((counts - DRAWS / 256) ** 2 / (DRAWS / 256)).sum())
    assert chi2 < 255 + Z * math.sqrt(2 * 255)


# --- the rounding, bit for bit --------------------------------------------------------------

def _cpu_round(name):
    helper = storage.store_stochastic(CODES[name])

    @njit
    def run(x, bits):
        out = np.empty(x.size, np.uint16)
        for i in range(x.size):
            out[i] = helper(x[i], bits[i])
        return out
    return run


def _neighbours(x: np.ndarray, dtype):
    """(toward zero, away from zero) 16-bit neighbours of float32 ``x``, as bits: from the
    nearest value and NumPy's nextafter on the 16-bit type (past the largest finite value,
    inf is the one away from zero)."""
    with np.errstate(invalid="ignore", over="ignore"):
        near = x.astype(dtype)
        wide = near.astype(np.float64)
        x64 = x.astype(np.float64)
        over = np.abs(wide) > np.abs(x64)  # rounded away from zero
        toward = np.where(over, _step(near, toward_zero=True, dtype=dtype), near)
        exact = wide == x64
        away = np.where(exact, near, np.where(over, near, _step(near, False, dtype)))
    away = np.where(np.isnan(x), near, away)
    toward = np.where(np.isnan(x), near, toward)
    return toward.astype(dtype).view(np.uint16), away.astype(dtype).view(np.uint16)


def _step(values, toward_zero: bool, dtype):
    """One ulp toward or away from zero (bits arithmetic of sign-magnitude formats)."""
    bits = values.astype(dtype).view(np.uint16).astype(np.int32)
    magnitude = bits & 0x7FFF
    moved = np.where(toward_zero, magnitude - 1, magnitude + 1)
    moved = np.where(toward_zero & (magnitude == 0), 0, moved)
    return ((bits & 0x8000) | moved).astype(np.uint16).view(dtype)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_rounding_has_the_same_bits_everywhere_and_is_a_neighbour(name, host_probes):
    x = pat.float32_sample()
    bits = _rounding.array_bits(_rounding.element_hashes(np, _rounding.stream_base(5, 9),
                                                         x.size), 0)
    cpu = _cpu_round(name)(x, bits)
    cuda = np.zeros(x.size, np.uint16)
    host_probes(f"probe_round_stochastic<{storage_probe.TYPES[name]}>", x, bits, cuda,
                np.int64(x.size))
    unfused = _rounding.round_stochastic(np, x, DTYPES[name], bits).view(np.uint16)
    assert np.array_equal(cpu, cuda), f"{name}: CPU and CUDA host differ"
    assert np.array_equal(cpu, unfused), f"{name}: CPU and unfused differ"
    toward, away = _neighbours(x, DTYPES[name])
    nan = np.isnan(x)
    assert np.isnan(cpu[nan].view(DTYPES[name]).astype(np.float32)).all()
    ok = (cpu == toward) | (cpu == away)
    assert ok[~nan].all(), f"{name}: {np.count_nonzero(~ok[~nan])} results are not neighbours"
    # the sample's inexact values go both ways
    inexact = ~nan & (toward != away)
    assert 0.3 < np.count_nonzero(cpu[inexact] == away[inexact]) / inexact.sum() < 0.7


# --- unbiased, through a step ---------------------------------------------------------------

#: (name, param dtype, start p0, learning rate, grad): x = p0 - lr * g exactly in float32.
BF16_MAX = float(pat.BF16(3.3895313892515355e38))
CASES = [
    ("bf16-normal", "bfloat16", 1.0, 2.0 ** -10, -3.0),            # 1 + 3/8 ulp
    ("bf16-negative", "bfloat16", -1.0, 2.0 ** -10, 3.0),          # -(1 + 3/8 ulp)
    ("bf16-normal-small", "bfloat16", 2.0 ** 20, 2.0 ** 7, -1.0),   # 2^20 + 1/16 ulp
    ("bf16-subnormal", "bfloat16", 2.0 ** -130, 2.0 ** -140, -3.0),  # 3/128 of 2^-133
    ("bf16-below-max", "bfloat16", BF16_MAX - 2.0 ** 120, 2.0 ** 117, -5.0),
    ("bf16-past-max", "bfloat16", BF16_MAX, 2.0 ** 117, -3.0),      # inf with p = 3/8
    ("f16-normal", "float16", 1.0, 2.0 ** -12, -3.0),              # 1 + 3/4 ulp (2^-10)
    ("f16-subnormal", "float16", 2.0 ** -20, 2.0 ** -27, -3.0),    # 3/8 of 2^-24
    ("f16-below-max", "float16", 65472.0, 4.0, -3.0),              # 65484: 3/8 of 32
    ("f16-past-max", "float16", 65504.0, 4.0, -3.0),               # 65516: inf, p = 3/8
]


def _independent(x: float, name: str):
    """(lo, hi, P(hi)) of float64 ``x`` for the 16-bit type, from its exponent alone."""
    mantissa, min_exp, max_exp = (7, -126, 127) if name == "bfloat16" else (10, -14, 15)
    a = abs(x)
    exponent = max(math.floor(math.log2(a)), min_exp)
    ulp = 2.0 ** (exponent - mantissa)
    lo = math.floor(a / ulp) * ulp
    hi = lo + ulp
    if hi >= 2.0 ** (max_exp + 1):
        hi = math.inf
    return math.copysign(lo, x), math.copysign(hi, x), (a - lo) / ulp


def _stepped(backend, name, p0, lr, g, request):
    if backend == "cuda":
        request.getfixturevalue("host_cuda")
    dtype = DTYPES[name]
    p = np.full(DRAWS, p0, np.float64).astype(dtype)
    grad = np.full(DRAWS, g, np.float64).astype(dtype)
    opt = SGD(learning_rate=lr, backend=backend, stochastic_rounding=True, seed=2024)
    opt.apply_gradients([(grad, p)])
    return p


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_unbiased(case, request):
    _, name, p0, lr, g = case
    x = p0 - lr * g  # exact in float64 and in float32
    assert float(np.float32(p0) - np.float32(lr) * np.float32(g)) == x
    lo, hi, share = _independent(x, name)
    assert 0.01 < share < 0.99  # not a 16-bit value, and not next to one
    got = _stepped("cpu", name, p0, lr, g, request).astype(np.float64)
    is_hi = got == hi
    assert np.all(is_hi | (got == lo)), f"{name}: values other than {lo} and {hi}"
    ups = int(np.count_nonzero(is_hi))
    z = (ups - DRAWS * share) / math.sqrt(DRAWS * share * (1 - share))
    assert abs(z) <= Z, f"{case[0]}: {ups} of {DRAWS} up, expected {DRAWS * share:.0f} (z={z:.2f})"
    if math.isfinite(hi):
        mean = float(np.mean(got))
        spread = abs(hi - lo) * math.sqrt(share * (1 - share) / DRAWS)
        assert abs(mean - x) <= Z * spread, f"{case[0]}: mean {mean!r} vs {x!r}"


@pytest.mark.parametrize("case", [CASES[0], CASES[7]], ids=["bf16-normal", "f16-subnormal"])
def test_every_backend_draws_the_same_roundings(case, request):
    _, name, p0, lr, g = case
    cpu = _stepped("cpu", name, p0, lr, g, request)
    for backend in ("cuda", "unfused"):
        other = _stepped(backend, name, p0, lr, g, request)
        assert np.array_equal(cpu.view(np.uint16), other.view(np.uint16)), backend
