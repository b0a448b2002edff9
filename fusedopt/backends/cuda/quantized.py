"""Quantized state (``state_dtype="q8"``/``"q4"``, fusedopt/memory/quant.py) on the CUDA backend:
which steps have kernels, their entry points, and the map tables the kernels read.

The kernels (kernels/quantized.cuh) live in a family file of their own per optimizer family,
``kernels/<family>_quantized.cu``, generated beside ``kernels/<family>.cu`` (whose rule they
include): one warp owns one quantization block at a time and reduces its absmax with warp
shuffles, so these kernels' threads cooperate, which the float kernels' never do.

Covered today: the families in :data:`FAMILIES` (elementwise rules, no ``float_state`` slot,
no per-tensor reductions), the params and modes of :data:`KEPT`, codes rounded to nearest
(stochastically under ``stochastic_rounding``).
Every other quantized step on ``'cuda'`` is refused
before anything changes (:func:`refusal`), with the CPU backend as the way to run it.
"""

from __future__ import annotations

import functools

import numpy as np

from ...memory.quant import FORMATS, cuts, qmap
from ...memory.storage import Storage, describe, grad_dtypes

#: Optimizer families with quantized CUDA kernels. Each adds one entry point per storage of
#: :func:`storages` and flag combination to every gate, so families join as they are needed
#: (the gates' time is budgeted: kernels/README.md).
FAMILIES = ("adam",)

#: (param dtype, mode) pairs the quantized kernels are built for: float32 and bfloat16
#: params, and bfloat16 params with stochastic rounding (of the param and the codes). Each
#: pair is 12 entry points per family in every gate (6 flag combinations, 2 formats), so
#: float16 params, stochastic codes beside float32 params, masters, remainders and Kahan
#: summation stay on the CPU backend for now.
KEPT = (("float32", "plain"), ("bfloat16", "plain"), ("bfloat16", "stochastic"))

#: Threads of one warp, which owns one quantization block at a time.
WARP = 32


def family(kernel: str) -> str:
    """The CUDA family of ``kernel``'s quantized entry points."""
    return f"{kernel}_quantized"


#: One format per code width: the formats of a width (q8, q8-dynamic, q8-bitsandbytes; q4,
#: q4-power) share their kernels, the map and its decision points being an argument.
KERNEL_FORMATS = ("q8", "q4")


def storages() -> tuple[Storage, ...]:
    """Every quantized storage whose kernel the runtime can request (a format of another
    map requests its width's)."""
    return tuple(Storage(p, g, fmt, m) for fmt in KERNEL_FORMATS for p, m in KEPT
                 for g in grad_dtypes(p, m))


def sampled_storages() -> tuple[Storage, ...]:
    """The quantized storages the gates that sample (the second arch's compile, the
    sanitizers) take: each format on float32 params, and q8 with stochastic codes (the
    rest differs only in the param's load and store, which the float kernels' gates cover
    for every storage)."""
    return tuple(st for st in storages() if st.param == "float32"
                 or (st.mode, st.state) == ("stochastic", "q8"))


def covers(spec) -> bool:
    """Whether ``spec``'s family has quantized CUDA kernels."""
    return (spec.on_cuda and spec.kernel in FAMILIES and spec.reductions is None
            and not any(s.float_state for s in spec.slot_decls))


def entry(spec, storage: Storage, flags: tuple[int, ...]) -> str:
    """The name expression of ``spec``'s quantized kernel for ``storage`` and ``flags``,
    e.g. ``adam_quantized<float, float, fusedopt::Q8, 0, 1, 0>``."""
    return family(spec.kernel) + spec.entry(storage, flags)[len(spec.kernel):]


def entries(spec) -> list[tuple[Storage, tuple[int, ...], str]]:
    """(storage, flags, name expression) of every quantized entry point of ``spec``."""
    if not covers(spec):
        return []
    return [(st, f, entry(spec, st, f))
            for st in storages() if st.param in spec.dtypes for f in spec.all_flags]


def refusal(spec, storage: Storage) -> str | None:
    """Why a step of ``spec`` with ``storage`` has no CUDA kernel (None: it has one)."""
    if not storage.quantized:
        return None
    fix = ("step it on the CPU backend (NumPy arrays or CPU tensors, or backend='cpu'), or "
           "keep float state (state_dtype=None)")
    if not covers(spec):
        why = ("its per-tensor reductions over quantized slots run on the CPU backend only"
               if spec.reductions is not None else
               "its quantized momentum runs on the CPU backend only"
               if spec.matrix is not None else
               "a float32 slot beside the codes runs on the CPU backend only"
               if any(s.float_state for s in spec.slot_decls) else
               f"quantized CUDA kernels exist for the {', '.join(FAMILIES)} family only")
        return (f"{spec.class_name} with state_dtype={storage.state!r} has no CUDA kernel yet "
                f"({why}): {fix}")
    if (storage.param, storage.mode) not in KEPT:
        what = f"{storage.param} params" + ("" if storage.mode == "plain" else
                                            f" and {describe(storage.mode)}")
        return (f"{spec.class_name} with state_dtype={storage.state!r}, {what} has no "
                f"CUDA kernel yet: {fix}")
    return None


@functools.lru_cache(maxsize=None)
def map_tables(fmt: str, signed: tuple) -> np.ndarray:
    """The float32 tables the kernels of format ``fmt`` read, per slot (``signed``: each
    slot's ``spec.signed_slots``): the map's entries ascending, its decision points
    (``quant.cuts``: a value's code is the count of points <= it; the midpoints for nearest
    rounding),
    and its entries after the first, padded with +inf (stochastic rounding: the count of
    them <= a value is the entry below it). Any ascending float32 map works: the kernels
    search it, assuming no formula."""
    levels = FORMATS[fmt].levels
    out = np.zeros((max(len(signed), 1), 3, levels), dtype=np.float32)
    for k, sign in enumerate(signed):
        values = qmap(fmt, True if sign is None else bool(sign))
        out[k, 0], out[k, 1] = values, cuts(fmt, True if sign is None else bool(sign))
        out[k, 2] = np.concatenate([values[1:], np.float32([np.inf])])
    return out.reshape(-1)
