"""The generated quantized kernel files (fusedopt/backends/cuda/quantized.py):
``kernels/<family>_quantized.cu``, a family's rule over q8 / q4 state (kernels/quantized.cuh),
and for an optimizer with per-tensor reductions ``kernels/<family>_reduce_quantized.cu``, its
reduction terms over the same codes (kernels/quantized_reduce.cuh).
fusedopt/backends/cuda/codegen.py writes them beside ``kernels/<family>.cu``."""

from __future__ import annotations

from . import quantized
from .translate import RuleError, _pascal


def step_source(spec, header: list[str], slots: str) -> str:
    """``kernels/<family>_quantized.cu``: the ``__global__`` template of ``spec``'s rule over
    quantized state, named ``<family>_quantized<P, G, F, MODE, flags...>`` (F the format:
    ``fusedopt::Q8``, ``fusedopt::Q4``); ``header`` its opening comment, ``slots`` the
    expression of the variant's slot count; float32 slots (``quantized.float_slots``) go to
    kernels/quantized.cuh as its ``FLOATS`` mask. With per-tensor reductions it takes their
    scalars (``tensor_scalars``, as the float step does) before the maps."""
    family = _pascal(spec.kernel)
    flags = [f.upper() for f in spec.flag_names]
    rule = f"fusedopt::{family}Rule<C, {', '.join(flags)}>"
    floats = quantized.float_slots(spec)
    if spec.reductions is None:
        params = "FUSEDOPT_QUANTIZED_PARAMS(P)"
        body = ([f"    FUSEDOPT_APPLY_QUANTIZED(P, G, F, MODE, {slots}, {rule});"]
                if floats is None else
                [f"    constexpr int FLOATS = {floats};  // float32 slots",
                 f"    FUSEDOPT_APPLY_QUANTIZED_FLOATS(P, G, F, MODE, {slots}, FLOATS, "
                 f"{rule});"])
    elif floats is not None:
        raise RuleError(f"{spec.name}: float32 slots beside codes with per-tensor "
                         "reductions have no quantized CUDA kernel")
    else:
        params = ("FUSEDOPT_OPTIMIZER_PARAMS(P), const double* __restrict__ tensor_scalars,\n"
                  f"{' ' * len(f'__global__ void {quantized.family(spec.kernel)}(')}"
                  "const float* __restrict__ maps")
        body = [f"    fusedopt::apply_quantized_chunk<P, G, F, MODE, {slots}, {rule}>(",
                "        table, n_tensors, chunk, fusedopt::Steps<C>{rows, control, flags, "
                "n_tensors}, maps,",
                "        fusedopt::TensorScalars{tensor_scalars, n_tensors});"]
    return "\n".join([
        *header,
        f'#include "{spec.kernel}.cu"',
        '#include "quantized.cuh"',
        "",
        *_template(flags),
        f"__global__ void {quantized.family(spec.kernel)}({params}) {{",
        "    using C = fusedopt::compute_t<P>;",
        *body,
        "}",
        "",
    ])


def reduce_source(spec, header: list[str], slots: str) -> str:
    """``kernels/<family>_reduce_quantized.cu``: the reduction terms of
    ``kernels/<family>_reduce.cu`` over quantized slots, named
    ``<family>_reduce_quantized<P, G, F, MODE, flags...>``, and the combine of its block
    sums."""
    family = _pascal(spec.kernel)
    flags = [f.upper() for f in spec.flag_names]
    return "\n".join([
        *header,
        f'#include "{spec.reduce_kernel}.cu"',
        '#include "quantized_reduce.cuh"',
        "",
        *_template(flags),
        f"__global__ void {quantized.family(spec.reduce_kernel)}"
        "(FUSEDOPT_QUANTIZED_REDUCE_PARAMS(P)) {",
        "    using C = fusedopt::compute_t<P>;",
        f"    FUSEDOPT_REDUCE_QUANTIZED(P, G, F, MODE, {slots}, "
        f"fusedopt::{family}Terms<C, {', '.join(flags)}>);",
        "}",
        "",
    ])


def _template(flags: list[str]) -> list[str]:
    return [f"template <typename P, typename G, typename F, int MODE, "
            f"{', '.join(f'int {f}' for f in flags)}>"]
