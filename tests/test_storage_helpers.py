"""The widen/round helpers of both backends against ml_dtypes and NumPy, bit for bit.

One helper pair per backend (fusedopt/backends/cpu/storage.py, kernels/storage.cuh through the host
build), checked on every 16-bit pattern (widening) and on the dense float32 sample of
tests/storage_patterns.py (rounding to nearest even and to nearest away; the remainder
split and rebuild of bfloat16 masters). Non-NaN results must have the expected bits; NaN
results must be NaN of the expected sign (NumPy and ml_dtypes canonicalize payloads, and so
do the helpers, but NaN payloads are not part of the contract).
"""

import numpy as np
import pytest
import storage_patterns as pat
from cuda_host import HostRuntime, storage_probe
from numba import njit

from fusedopt.backends.cpu import storage

DTYPES = {"bfloat16": pat.BF16, "float16": np.float16}
CODES = {"bfloat16": storage.BF16, "float16": storage.F16}
ROUNDINGS = {"nearest_even": storage.NEAREST_EVEN, "nearest_away": storage.NEAREST_AWAY}
EXPECTED = {"nearest_even": pat.nearest_even, "nearest_away": pat.nearest_away}


def _cpu_map(helper, out_dtype):
    """A jitted loop applying the (inlined) ``helper`` to every element."""
    @njit
    def run(values):
        out = np.empty(values.size, out_dtype)
        for i in range(values.size):
            out[i] = helper(values[i])
        return out
    return run


@pytest.fixture(scope="module")
def host_probes(cuda_cache_dir):
    host = HostRuntime(cuda_cache_dir / "host", sources={"storage_probe": storage_probe.text()})
    module = host.module("storage_probe", storage_probe.NAMES)

    def call(name, *arrays):
        n = np.int64(arrays[0].size)
        module.get_function(name)(storage_probe.GRID, storage_probe.BLOCK, (*arrays, n))
    return call


def _check(got, expected, dtype, what):
    ok = pat.same_bits_or_both_nan(got, expected, dtype)
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (f"{what}: {bad.size} patterns differ, e.g. input index {bad[0]}: "
                           f"got {int(got[bad[0]]):#x}, expected {int(expected[bad[0]]):#x}")


# --- widening: every 16-bit pattern -------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DTYPES))
def test_cpu_widen_every_16bit_pattern(name):
    bits = pat.all_16bit()
    got = _cpu_map(storage.load(CODES[name]), np.float32)(bits).view(np.uint32)
    _check(got, pat.widened(bits, DTYPES[name]), np.float32, f"CPU {name} widen")


def test_cpu_float16_emulation_every_pattern():
    """The loops use the CPU's own float16 conversions where it has them
    (storage.NATIVE_F16; the tests above check whichever the loops use), else the integer
    emulation: checked here against ml_dtypes on every machine."""
    natives = (storage.f16_widen_native, storage._f16_even_native)
    emulated = (storage.f16_widen, storage._f16_even)
    chosen = (storage.load(storage.F16), storage.store(storage.F16))
    assert chosen == (natives if storage.NATIVE_F16 else emulated)
    bits, x = pat.all_16bit(), pat.float32_sample()
    got = _cpu_map(storage.f16_widen, np.float32)(bits).view(np.uint32)
    _check(got, pat.widened(bits, np.float16), np.float32, "CPU float16 widen (emulated)")
    got = _cpu_map(storage._f16_even, np.uint16)(x)
    _check(got, pat.nearest_even(x, np.float16), np.float16,
           "CPU float16 nearest_even (emulated)")


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_cuda_widen_every_16bit_pattern(host_probes, name):
    bits = pat.all_16bit()
    out = np.empty(bits.size, np.float32)
    host_probes(f"probe_widen<{storage_probe.TYPES[name]}>", bits, out)
    _check(out.view(np.uint32), pat.widened(bits, DTYPES[name]), np.float32,
           f"CUDA {name} widen")


# --- rounding: the dense float32 sample ---------------------------------------------------

@pytest.mark.parametrize("rounding", sorted(ROUNDINGS))
@pytest.mark.parametrize("name", sorted(DTYPES))
def test_cpu_round_dense_float32_sample(name, rounding):
    x = pat.float32_sample()
    got = _cpu_map(storage.store(CODES[name], ROUNDINGS[rounding]), np.uint16)(x)
    _check(got, EXPECTED[rounding](x, DTYPES[name]), DTYPES[name], f"CPU {name} {rounding}")


@pytest.mark.parametrize("rounding", sorted(ROUNDINGS))
@pytest.mark.parametrize("name", sorted(DTYPES))
def test_cuda_round_dense_float32_sample(host_probes, name, rounding):
    x = pat.float32_sample()
    out = np.empty(x.size, np.uint16)
    host_probes(f"probe_round<{storage_probe.TYPES[name]}, {ROUNDINGS[rounding]}>", x, out)
    _check(out, EXPECTED[rounding](x, DTYPES[name]), DTYPES[name], f"CUDA {name} {rounding}")


def test_the_sample_holds_the_cases_that_matter():
    """Ties of every cut, carries into the exponent and to inf, both signs, NaN and inf."""
    u = pat.float32_sample().view(np.uint32)
    assert u.size == (1 << 16) * pat.LOW_HALVES.size >= 2_000_000
    for low in (0x8000, 0x1000, 0x2000, 0x4000):  # bf16 tie; f16 normal and subnormal ties
        assert np.count_nonzero((u & 0xFFFF) == low) == 1 << 16
    wanted = np.array([0x7F7F8000, 0xFF7F8000, 0x3F7FFFFF, 0x477FF000, 0x477FEFFF,
                       0x7F800000, 0x7F800001, 0xFFC00000, 0x00000001, 0x80000000,
                       0x38800000, 0x387FFFFF], np.uint32)
    assert np.isin(wanted, u).all()
    x = u.view(np.float32)
    away, even = pat.nearest_away(x, pat.BF16), pat.nearest_even(x, pat.BF16)
    assert np.count_nonzero(away != even) > 10_000  # the two roundings do differ on ties


# --- remainder masters: split and rebuild -------------------------------------------------

@njit
def _cpu_split(x):
    hi = np.empty(x.size, np.uint16)
    rem = np.empty(x.size, np.int16)
    back = np.empty(x.size, np.float32)
    for i in range(x.size):
        h, r = storage.split_master(x[i])
        hi[i], rem[i] = h, r
        back[i] = storage.rebuild_master(h, r)
    return hi, rem, back


def _check_split(x, hi, rem, back, what):
    nan = np.isnan(x)
    u, rebuilt = x.view(np.uint32), back.view(np.uint32)
    wrong = np.flatnonzero(~nan & (rebuilt != u))
    assert wrong.size == 0, (f"{what}: rebuild differs for {wrong.size} patterns, e.g. "
                             f"{int(u[wrong[0]]):#010x} -> {int(rebuilt[wrong[0]]):#010x}")
    # The param half is the nearest bf16 (ties away), exactly what master mode writes.
    expected_hi = pat.nearest_away(x, pat.BF16)
    assert np.array_equal(hi[~nan], expected_hi[~nan]), f"{what}: param half not nearest"
    # The remainder is the exact difference, as an int16.
    diff = u[~nan].astype(np.int64) - (hi[~nan].astype(np.int64) << 16)
    assert np.array_equal(rem[~nan].astype(np.int64), diff), f"{what}: remainder"
    assert np.isnan(hi[nan].view(pat.BF16).astype(np.float32)).all(), f"{what}: NaN param"
    assert np.isnan(back[nan]).all(), f"{what}: NaN master"


def test_cpu_split_and_rebuild_dense_float32_sample():
    x = pat.float32_sample()
    _check_split(x, *_cpu_split(x), "CPU")


def test_cuda_split_and_rebuild_dense_float32_sample(host_probes):
    x = pat.float32_sample()
    hi, rem, back = np.empty(x.size, np.uint16), np.empty(x.size, np.int16), np.empty_like(x)
    host_probes("probe_split", x, hi, rem, back)
    _check_split(x, hi, rem, back, "CUDA")


def test_split_carries_and_signs():
    """The cases the remainder gets wrong most easily, spelled out."""
    cases = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80FFFF, 0xBF80FFFF,
                      0x3FFFFFFF, 0xBFFFFFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x00008000,
                      0x80008000, 0x7F800000, 0x80000000], np.uint32).view(np.float32)
    hi, rem, back = _cpu_split(cases)
    assert np.array_equal(back.view(np.uint32), cases.view(np.uint32))
    # 1 + 2^-8 + 2^-9 (low half 0x8000): away from zero -> 0x3F81, remainder -2^15.
    assert hi[0] == 0x3F81 and rem[0] == -32768
    assert hi[2] == 0xBF81 and rem[2] == -32768  # the same, negative
    assert hi[5] == 0x4000 and rem[5] == -1      # the carry into the exponent
    assert hi[7] == 0x7F80                        # the largest float32 -> inf in bf16
