"""The machine code of the CPU element loop (fusedopt/backends/cpu/loop.py): packed square roots and
divisions, so the loop is vectorized, in 512-bit registers where the CPU has them."""

import pytest
from llvmlite import binding
from numba import cfunc

from fusedopt.algorithms.adam import ADAM
from fusedopt.backends.cpu import loop, storage
from fusedopt.constants import KERAS

#: (param, grad, state) storage codes and the array dtypes the loop sees them as.
STORAGES = {"float32": (storage.F32,) * 3,
            "bfloat16, float32 state": (storage.BF16, storage.BF16, storage.F32),
            "bfloat16, bfloat16 state": (storage.BF16,) * 3}


def _element_loop_asm(codes, clamps: bool = True) -> str:
    """Assembly of a fresh (uncached) compile of the element loop for Keras-style Adam."""
    variant = loop.specialize(ADAM, (KERAS, 0), codes, clamps=clamps)
    span = cfunc(loop.span_signature(variant, 10), error_model="numpy")(loop._span)
    return span._library.get_asm_str()


@pytest.mark.parametrize("name", STORAGES)
def test_the_element_loop_is_vectorized(name):
    asm = _element_loop_asm(STORAGES[name])
    assert "vsqrtps" in asm and "vdivps" in asm, "no packed sqrt/division: not vectorized"
    if "+avx512f" in binding.get_host_cpu_features().flatten():
        assert "zmm" in asm, "AVX-512 CPU, but the loop does not use 512-bit registers"


def _vector_loops(asm: str) -> list[str]:
    """The basic blocks of ``asm`` that hold a packed 256- or 512-bit division: the vector
    loops."""
    blocks, current = [], []
    for line in asm.splitlines():
        if line.endswith(":") and not line.startswith("\t"):
            blocks.append("\n".join(current))
            current = []
        current.append(line)
    blocks.append("\n".join(current))
    return [b for b in blocks if "vdivps\t%zmm" in b or "vdivps\t%ymm" in b]


def test_an_all_16_bit_storage_has_a_loop_without_shuffles():
    """bf16 params, grads and state go two to a 32-bit word: a vector loop that widens
    with shifts and masks, with no lane-widening load or narrowing store (the shuffle
    port's instructions); float32 state keeps the one-element loop."""
    shuffles = ("vpmovzxwd", "vpmovdw")
    paired = _vector_loops(_element_loop_asm(STORAGES["bfloat16, bfloat16 state"]))
    assert any(not any(s in b for s in shuffles) for b in paired), paired
    single = _vector_loops(_element_loop_asm(STORAGES["bfloat16, float32 state"]))
    assert single and all("vpmovzxwd" in b for b in single)


def test_a_step_without_clipping_runs_no_clamp():
    """The clamping variant holds clamp(g * scale, -limit, limit) in its vector loop; the
    one a step without clipping or loss scale runs has no min, max or grad multiply."""
    clamping = _vector_loops(_element_loop_asm(STORAGES["float32"], clamps=True))
    plain = _vector_loops(_element_loop_asm(STORAGES["float32"], clamps=False))
    assert clamping and all("vmaxps" in b and "vminps" in b for b in clamping)
    assert plain and not any("vmaxps" in b or "vminps" in b for b in plain)
