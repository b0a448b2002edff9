"""The machine code of the CPU element loop (fusedopt/_cpu/loop.py): packed square roots and
divisions, so the loop is vectorized, in 512-bit registers where the CPU has them."""

import pytest
from llvmlite import binding
from numba import cfunc

from fusedopt._cpu import loop, rules, storage

#: (param, grad, state) storage codes and the array dtypes the loop sees them as.
STORAGES = {"float32": (storage.F32,) * 3,
            "bfloat16, float32 state": (storage.BF16, storage.BF16, storage.F32),
            "bfloat16, bfloat16 state": (storage.BF16,) * 3}


def _element_loop_asm(codes) -> str:
    """Assembly of a fresh (uncached) compile of the element loop for Keras-style Adam."""
    variant = loop.specialize(rules.adam, (rules.KERAS, 0), 2, codes)
    span = cfunc(loop.span_signature(variant, 10), error_model="numpy")(loop._span)
    return span._library.get_asm_str()


@pytest.mark.parametrize("name", STORAGES)
def test_the_element_loop_is_vectorized(name):
    asm = _element_loop_asm(STORAGES[name])
    assert "vsqrtps" in asm and "vdivps" in asm, "no packed sqrt/division: not vectorized"
    if "+avx512f" in binding.get_host_cpu_features().flatten():
        assert "zmm" in asm, "AVX-512 CPU, but the loop does not use 512-bit registers"
