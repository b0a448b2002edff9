"""Quantized state (``state_dtype="q8"``/``"q4"``, fusedopt/memory/quant.py) on the CUDA backend:
which steps have kernels, their entry points, and the map tables the kernels read.

The kernels (kernels/quantized.cuh) live in a family file of their own per optimizer family,
``kernels/<family>_quantized.cu``, generated beside ``kernels/<family>.cu`` (whose rule they
include): one warp owns one quantization block at a time and reduces its absmax with warp
shuffles, so these kernels' threads cooperate, which the float kernels' never do.

Covered today: the families in :data:`FAMILIES`: every elementwise rule; schedule-free,
whose ``float_state`` slots (z and y) are float32 beside the codes, read and written as
they are (``FLOATS`` in kernels/quantized.cuh); LAMB and StableAdamW, whose per-tensor
reductions read the codes through ``kernels/<family>_reduce_quantized.cu``
(kernels/quantized_reduce.cuh); and Muon's momentum pass, whose one float32 slot is its
output (:data:`OUTPUTS`). Each family beside the params and modes of its :data:`KEPT`
(every family beside float32 params and bfloat16 params in every mode: rounded to
nearest or stochastically, with a float32 master, a remainder or Kahan summation; Adam's
family also beside float16 params and float32 params with stochastic codes; Muon's
beside float32 params alone), codes rounded to nearest (stochastically under
``stochastic_rounding``). Every other quantized step on ``'cuda'`` is refused before
anything changes (:func:`refusal`, naming what the family's kernels take), with the CPU
backend as the way to run it. (Adafactor refuses quantized state on every backend.)

What the families cost the gates (measured with benchmarks/cuda_quantized_gate_cost.py;
kernels/README.md, "Quantized state: which families, and what the gates cost"): every
entry point costs every gate, NVRTC about 0.2 s of it on sm_90 alone, and most of the
rest is per family, not per entry point: the thirteen families beside Adam's at its
three pairs are 228 entry points on sm_90 and 94 CPU s of cold gate builds, at two pairs
152 and 86 s (schedule-free's, added after, 42 entry points and 14.5 s; LAMB's and
StableAdamW's, with their reductions over the codes, 50 entry points and 32 s; Muon's
momentum pass, on float32 params only, 8 entry points and 6.9 s). So every family builds
all three pairs, and none refuses bfloat16 params rounded to nearest for a few seconds of
the suite. Adam's family builds five pairs more (:data:`ADAM_PAIRS`): its 36 entry points
became 120 on sm_90, 23.6 CPU s of cold gate builds 55.3 (25.0 and 65.3 in a second run;
2026-12-07, the 2-core machine shared); every storage its float kernels take (float16's
master, Kahan and stochastic modes too) measured 168 entry points and 88.4 s, against
24.3 in that run. Masters for every family (bfloat16 params with a float32 master, float32
or bfloat16 grads: the usual mixed-precision recipe beside 8-bit state) added 212 entry
points on sm_90 and 18 on sm_80 (2077 and 279 in all), paid for by the host build at -O0
(tests/cuda_host/build.py); remainders and Kahan summation for every family, 318 more
(2395 on sm_90), so that bfloat16 params take every mode on CUDA in every family.
Float16 params and float32 params with stochastic codes stay Adam's alone (98 entry
points each more for the other families).
"""

from __future__ import annotations

import functools

import numpy as np

from ...memory.quant import FORMATS, cuts, qmap
from ...memory.storage import Storage, describe, grad_dtypes

#: Optimizer families with quantized CUDA kernels: every elementwise one, and LAMB and
#: StableAdamW (whose reductions add a reduction entry point beside each step's). Each adds
#: one entry point per storage of :func:`storages` and flag combination to every gate (the
#: gates' time is budgeted: the module's docstring).
FAMILIES = ("adam", "adadelta", "adagrad", "adamax", "adan", "ademamix", "asgd", "ftrl",
            "lamb", "lion", "muon_momentum", "nadam", "radam", "rmsprop", "rprop",
            "schedulefree", "sgd", "stableadamw")

#: Families whose one ``float_state`` slot is no state but the pass's float32 output, kept in
#: the param's row of the launch table (the pass never changes its param): family -> that
#: slot. Muon's momentum pass writes ``u``, the update Newton-Schulz reads, beside its coded
#: m (kernels/muon_momentum_quantized.cu; fusedopt/engine/orthogonal.py).
OUTPUTS = {"muon_momentum": "u"}

#: (param dtype, mode) pairs every family's quantized kernels are built for: float32
#: params, and bfloat16 params in every mode (``storage.modes``): rounded to nearest, with
#: stochastic rounding (of the param and the codes), a float32 master, a remainder or Kahan
#: summation. Each pair is about 12 entry points per family in every gate (Adam's 6 flag
#: combinations, 2 formats; a master's and a remainder's two grad dtypes twice that).
PAIRS = (("float32", "plain"), ("bfloat16", "plain"), ("bfloat16", "stochastic"),
         ("bfloat16", "master"), ("bfloat16", "remainder"), ("bfloat16", "kahan"))

#: Adam's family (Adam, AdamW, AMSGrad: the common case) beside more: float32 params with
#: stochastic codes (the codes alone rounded stochastically, as a float32 param's float
#: state is) and float16 params rounded to nearest. Not float16's master, Kahan and
#: stochastic modes (refused, the CPU backend steps them): each storage is 12 entry points,
#: about 0.4 CPU s each across the gates (the module's docstring), and those four storages
#: measured about 30 s more than the 32 to 40 Adam's added.
ADAM_PAIRS = (*PAIRS, ("float32", "stochastic"), ("float16", "plain"))
#: family -> the (param dtype, mode) pairs its quantized kernels are built for: Adam's
#: :data:`ADAM_PAIRS`, every other family's :data:`PAIRS` (what more would cost the gates:
#: the module's docstring), so beside those float16 params and stochastic codes beside
#: float32 params stay on the CPU backend for now.
#: Muon's momentum pass is built for fewer: float32 params only, the dtype of the output it
#: writes in the param's row (a bfloat16 param's float32 update would also need a weight
#: pass reading float32 updates, which the float path does not build); Muon refuses every
#: mode but plain on every backend.
KEPT = {**{f: PAIRS for f in FAMILIES}, "adam": ADAM_PAIRS,
        "muon_momentum": (("float32", "plain"),)}

#: Threads of one warp, which owns one quantization block at a time.
WARP = 32


def family(kernel: str) -> str:
    """The CUDA family of ``kernel``'s quantized entry points."""
    return f"{kernel}_quantized"


#: One format per code width: the formats of a width (q8, q8-dynamic, q8-bitsandbytes; q4,
#: q4-power) share their kernels, the map and its decision points being an argument.
KERNEL_FORMATS = ("q8", "q4")


def storages(kernel: str) -> tuple[Storage, ...]:
    """Every quantized storage of family ``kernel`` whose kernel the runtime can request (a
    format of another map requests its width's)."""
    return tuple(Storage(p, g, fmt, m) for fmt in KERNEL_FORMATS for p, m in KEPT[kernel]
                 for g in grad_dtypes(p, m))


def sampled_storages(kernel: str) -> tuple[Storage, ...]:
    """The quantized storages of family ``kernel`` the gates that sample (the second
    arch's compile, the sanitizers) take: each format on float32 params, q8 with
    stochastic codes beside bfloat16 params and q8 beside a bfloat16 master where the
    family keeps one (Muon's momentum pass does not): the master slot's address, load and
    store, the one path the modes that keep a slot add to the loop; bfloat16 grads, as the
    float kernels' sample, which steps the params below ``min_quantized_size``. The rest
    differs only in the param's load and store, which the float kernels' gates cover for
    every storage."""
    sample = (*(Storage("float32", "float32", fmt) for fmt in KERNEL_FORMATS),
              Storage("bfloat16", "bfloat16", "q8", "stochastic"),
              Storage("bfloat16", "bfloat16", "q8", "master"))
    return tuple(st for st in storages(kernel) if st in sample)


def covers(spec) -> bool:
    """Whether ``spec``'s family has quantized CUDA kernels (of an optimizer with a matrix
    transform, Muon, its momentum pass's family may: :func:`stepped_by`)."""
    output = OUTPUTS.get(spec.kernel)
    floats = [s.name for s in spec.slot_decls if s.float_state]
    return (spec.on_cuda and spec.kernel in FAMILIES
            and (output is None or (floats == [output]
                                    and spec.slot_decls[-1].name == output)))


def float_slots(spec) -> str | None:
    """The C++ bitmask of the slots ``spec``'s quantized kernels keep float32 beside the
    codes (``Slot.float_state``; kernels/quantized.cuh's ``FLOATS``): bit k where the
    variant's k-th slot is one, an expression of the flags; None where no slot is (a
    pass's output, :data:`OUTPUTS`, is no slot of the kernel's)."""
    output = OUTPUTS.get(spec.kernel)
    if not any(s.float_state and s.name != output for s in spec.slot_decls):
        return None
    terms, before = [], []
    for s in spec.slot_decls:
        bit = f"(1 << ({' + '.join(before) or '0'}))"
        if s.float_state:
            terms.append(bit if s.when is None else f"({s.when.upper()} ? {bit} : 0)")
        before.append("1" if s.when is None else f"({s.when.upper()} ? 1 : 0)")
    return " | ".join(terms)


def stepped_by(spec):
    """The spec whose kernels step ``spec``'s quantized state: itself, or the momentum pass
    of a matrix transform (the weight pass reads float32 updates: no codes)."""
    return spec if spec.matrix is None else spec.matrix.momentum


def kept(spec) -> tuple[tuple[str, str], ...]:
    """The (param dtype, mode) pairs ``spec``'s family is built for."""
    return KEPT[spec.kernel]


def entry(spec, storage: Storage, flags: tuple[int, ...]) -> str:
    """The name expression of ``spec``'s quantized kernel for ``storage`` and ``flags``,
    e.g. ``adam_quantized<float, float, fusedopt::Q8, 0, 1, 0>``."""
    return family(spec.kernel) + spec.entry(storage, flags)[len(spec.kernel):]


def entries(spec) -> list[tuple[Storage, tuple[int, ...], str]]:
    """(storage, flags, name expression) of every quantized entry point of ``spec``."""
    if not covers(spec):
        return []
    return [(st, f, entry(spec, st, f))
            for st in storages(spec.kernel) if st.param in spec.dtypes for f in spec.all_flags]


def reduce_entry(spec, storage: Storage, flags: tuple[int, ...]) -> str:
    """The name expression of the reduction kernel over ``spec``'s quantized slots, e.g.
    ``lamb_reduce_quantized<float, float, fusedopt::Q8, 0, 0>``."""
    return family(spec.reduce_kernel) + spec.entry(storage, flags)[len(spec.kernel):]


def reduce_entries(spec) -> list[str]:
    """Every quantized reduction entry point of ``spec`` (none without reductions), and the
    combine of their block sums (kernels/reduce.cuh)."""
    if not covers(spec) or spec.reduce_kernel is None:
        return []
    return [*(reduce_entry(spec, st, f) for st, f, _ in entries(spec)), "combine_sums"]


def refusal(spec, storage: Storage) -> str | None:
    """Why a step of ``spec`` with ``storage`` has no CUDA kernel (None: it has one)."""
    if not storage.quantized:
        return None
    fix = ("step it on the CPU backend (NumPy arrays or CPU tensors, or backend='cpu'), or "
           "keep float state (state_dtype=None)")
    stepped = stepped_by(spec)
    if not covers(stepped):
        why = ("its momentum pass has no quantized CUDA kernels"
               if spec.matrix is not None else
               "its family has no quantized CUDA kernels")
        return (f"{spec.class_name} with state_dtype={storage.state!r} has no CUDA kernel yet "
                f"({why}): {fix}")
    if (storage.param, storage.mode) not in kept(stepped):
        def name(param, mode):
            return f"{param} params" + ("" if mode == "plain" else f" with {describe(mode)}")
        built = ", ".join(name(p, m) for p, m in kept(stepped))
        return (f"{spec.class_name} with state_dtype={storage.state!r}, "
                f"{name(storage.param, storage.mode)} has no CUDA kernel yet (its quantized "
                f"CUDA kernels take {built}): {fix}")
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
