"""The one loop every CPU optimizer runs through.

It walks the same launch table as the CUDA kernels (fusedopt/memory/table.py). Numba's threads
share out the work items, so one huge tensor and two hundred tiny ones both keep every core
busy. A CPU work item runs from its own start, ``(tensor, chunk)``, up to the next item's
start (or the end of the table), crossing into following tensors when the next item starts
in a later one: with one item per chunk that is exactly a CUDA block's range, and with the
packed tables of fusedopt/memory/table.py one item covers several small tensors. Per tensor it
calls a span function with the operands' addresses: a non-parallel loop that, per element,
widens what it loads (fusedopt/backends/cpu/storage.py), calls the optimizer's scalar rule and
rounds what it stores; with unconditional stores LLVM vectorizes it. Where every operand
is bfloat16 and 4-byte aligned, it takes the elements two to a 32-bit word (:func:`pairs`).

The rule, its flags and the storage reach the span function as a :class:`Variant`, whose
Numba type carries them all, as the CUDA kernels take them as template arguments. So they
are constants in the compiled loop: LLVM drops the other variants' branches and each
element calls exactly one widening and one rounding per operand. Only the span function is
compiled per variant (a C function, :func:`span_function`); the table walk and the thread
pool's loop (:func:`run`, :func:`run_serial`) are compiled once and call it through its
address, once per tensor or span, so a new optimizer or storage costs one small compile.

Gradient clipping (fusedopt/engine/clip.py), and a loss scale's 1/s, happen here, not in the
rules: every grad is loaded as clamp(g * scale, -limit, limit) with its tensor's scale and
limit from the table (1 and +inf, exact no-ops, when there is nothing to clip).

How the param is kept (fusedopt/memory/storage.py): ``plain``, the param itself; ``master``, a
float32 master in the last table slot, from which the param is written (rounded to
nearest, ties away); ``remainder``, bfloat16 params with an int16 remainder in the last
slot, rebuilt into the float32 master and split again; ``kahan``, a compensation in the
param's dtype in the last slot, added to the param before the rule and refilled with what
the store rounded away; ``stochastic``, every 16-bit store rounded stochastically with the
random bits of fusedopt/backends/cpu/random_bits.py, keyed on the tensor's stream (a table row),
the step (an argument of :func:`run`) and the element's index.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, set_parallel_chunksize, types
from numba.core.extending import (
    intrinsic,
    overload,
)

from ... import config
from ...constants import MAX_SLOTS, STOCHASTIC
from . import random_bits
from ._cache import JIT_OPTIONS
from .element import _apply, _apply_pair, pairs
from .variant import _SCALAR_TYPES, MODE_CODES, WITH_SLOT, Variant, loop_dtypes, specialize

_CHUNK_MASK = 0xFFFFFFFF
_SPAN = 1 << 32  # element hashes share their first half within a span of this many

__all__ = ["MODE_CODES", "Variant", "cache_counts", "loop_dtypes", "pairs", "run", "run_serial",
           "span_function", "span_signature", "specialize"]


# --- spans, work items, the parallel loop ------------------------------------------------

#: The vector width LLVM is asked to prefer for the element loop, in bits.
VECTOR_BITS = 512


@intrinsic
def _prefer_wide_vectors(typingctx):
    """Ask LLVM to vectorize the calling function with :data:`VECTOR_BITS`-bit registers.

    On CPUs with AVX-512, LLVM's x86 tuning prefers 256-bit vectors (``prefer-256-bit``,
    against the clock drop of early AVX-512 parts), so without this the loop runs 8 float32
    lanes where the CPU has 16. The element loop is compute-heavy for 16-bit storage (the
    widening, the rounding, a square root and a division per element), and 512-bit lanes
    halve the instructions per element; the results are the same, lane for lane. The
    attribute only concerns this function (no global Numba setting changes) and is
    ignored on CPUs without 512-bit vectors. llvmlite knows no string attributes, hence
    ``set.add``.
    """
    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, f'"prefer-vector-width"="{VECTOR_BITS}"')
        return context.get_dummy_value()
    return types.none(), codegen


def _layout(variant):
    """(rule slots, 1 if a master slot follows them else 0, 1 if stochastic else 0, 1 if
    its elements go two to a word (:func:`pairs`) else 0, 1 if an average slot follows
    else 0): constants of the variant."""


@overload(_layout, inline="always")
def _layout_variant(variant):
    n_slots, master = variant.n_slots, int(variant.mode in WITH_SLOT)
    random, paired = int(variant.mode == STOCHASTIC), int(pairs(variant))
    average = int(variant.average)

    def body(variant):
        return n_slots, master, random, paired, average
    return body


def _operand_dtypes(variant) -> tuple:
    """Numba types of :func:`loop_dtypes` for a VariantType."""
    from numba.np.numpy_support import from_dtype
    return tuple(from_dtype(np.dtype(d)) for d in loop_dtypes(variant.codes, variant.mode))


def _operand(which: int):
    """An intrinsic: the int64 address as a pointer to the variant's ``which`` operand."""
    @intrinsic
    def operand(typingctx, variant, address):
        sig = types.CPointer(_operand_dtypes(variant)[which])(variant, address)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[1], context.get_value_type(signature.return_type))
        return sig, codegen
    return operand


_param_at, _grad_at, _state_at, _master_at = (_operand(k) for k in range(4))


@intrinsic
def _words_at(typingctx, address):
    """The int64 ``address`` as a pointer to uint32 words."""
    sig = types.CPointer(types.uint32)(address)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


def _compute_type_tuple(values, variant, first: int, stop: int):
    """An intrinsic's (signature, codegen): ``values[first:stop]`` converted to the variant's
    compute type (the same rounding as ``np.float32(x)`` on the host: to nearest)."""
    target = _operand_dtypes(variant)[4]
    sig = types.UniTuple(target, stop - first)(values, variant)

    def codegen(context, builder, signature, args):
        items = [context.cast(builder, builder.extract_value(args[0], k), values[k], target)
                 for k in range(first, stop)]
        return context.make_tuple(builder, signature.return_type, items)
    return sig, codegen


@intrinsic
def _in_compute_type(typingctx, values, variant):
    """The tuple of numbers ``values`` in the variant's compute type."""
    return _compute_type_tuple(values, variant, 0, len(values))


@intrinsic
def _rule_scalars(typingctx, values, variant):
    """The rule's scalars of the span's ``values`` (all but the average's last two), in the
    variant's compute type, as the rule's named tuple (``k.lr``, ...)."""
    n = len(values) - 2 * variant.average
    named = types.NamedUniTuple(_operand_dtypes(variant)[4], n, _SCALAR_TYPES[variant.rule])
    signature, codegen = _compute_type_tuple(values, variant, 0, n)
    return named(*signature.args), codegen


@intrinsic
def _average_scalars(typingctx, values, variant):
    """The average's ``(momentum, 1 - momentum)``, the last two of ``values``, in the
    variant's compute type (zeros, unused, where the variant has no average)."""
    if variant.average:
        return _compute_type_tuple(values, variant, len(values) - 2, len(values))
    target = _operand_dtypes(variant)[4]
    sig = types.UniTuple(target, 2)(values, variant)

    def codegen(context, builder, signature, args):
        zero = context.get_constant(target, 0)
        return context.make_tuple(builder, signature.return_type, [zero, zero])
    return sig, codegen


def _span(variant, p, g, s0, s1, s2, s3, x, v, n, scalars, scale, limit, key, offset):
    """``n`` elements of one tensor through ``variant``, from the operands' addresses (0
    for an operand the variant has not; ``v`` the average); ``scalars`` points at the
    rule's scalars as float64 (then the average's two), ``offset`` is the first element's
    index in its tensor (a key of its random bits).

    The operands are raw pointers, not Numba arrays: arrays carry reference counts, whose
    updates around the call of the rule (a function of its own, rules.py) keep LLVM's
    vectorizer off the loop until it has inlined the call, which comes too late."""
    _prefer_wide_vectors()
    paired = _layout(variant)[3]
    h = _rule_scalars(scalars[0], variant)
    ema = _average_scalars(scalars[0], variant)
    scale_, limit_ = _in_compute_type((scale, limit), variant)
    done = 0
    if paired and (p | g | s0 | s1 | s2 | s3 | x) & 3 == 0:  # every operand's words aligned
        words = n >> 1
        pw, gw, xw = _words_at(p), _words_at(g), _words_at(x)
        s0w, s1w, s2w, s3w = _words_at(s0), _words_at(s1), _words_at(s2), _words_at(s3)
        for i in range(words):
            _apply_pair(variant, i, pw, gw, s0w, s1w, s2w, s3w, xw, h, ema, scale_, limit_,
                        key, offset)
        done = 2 * words
    # The elements left (all of them, unless taken in pairs above), one at a time.
    p_, g_, x_, v_ = (_param_at(variant, p), _grad_at(variant, g), _master_at(variant, x),
                      _param_at(variant, v))
    s0_, s1_ = _state_at(variant, s0), _state_at(variant, s1)
    s2_, s3_ = _state_at(variant, s2), _state_at(variant, s3)
    for i in range(done, n):
        _apply(variant, i, p_, g_, s0_, s1_, s2_, s3_, x_, v_, h, ema, scale_, limit_, key,
               offset)


_I64, _F64 = types.int64, types.float64
# _span, _call_span and _run_item carry the slots as s0..s3.
assert MAX_SLOTS == 4, "the CPU loop carries 4 state slots"


def span_signature(variant: Variant, n_scalars: int):
    """The C signature of :func:`_span` for ``variant`` and ``n_scalars`` scalars."""
    return types.void(variant._numba_type_, *(_I64,) * (5 + MAX_SLOTS),
                      types.CPointer(types.UniTuple(_F64, n_scalars)), _F64, _F64,
                      types.uint32, _I64)


@functools.lru_cache(maxsize=None)
def span_function(variant: Variant, n_scalars: int):
    """:func:`_span` for ``variant`` and a rule of ``n_scalars`` scalars, compiled as a C
    function (its address goes to the shared driver below, which is compiled once).

    Only this function is compiled per optimizer variant and storage; the table walk and
    the thread pool's loop are compiled once for all of them (a specialization costs about
    half the compile time it cost when every level was specialized: benchmarks/RESULTS.md)."""
    from numba import cfunc
    function = cfunc(span_signature(variant, n_scalars), cache=JIT_OPTIONS["cache"],
                     error_model="numpy")(_span)
    _SPAN_FUNCTIONS.append(function)
    return function


_SPAN_FUNCTIONS: list = []


@intrinsic
def _call_span(typingctx, span, p, g, s0, s1, s2, s3, x, v, n, scalars, scale, limit, key,
               offset):
    """Call the C function at address ``span`` (a :func:`span_function`) with these
    arguments: no variant (the function ignores its opaque first argument), ``scalars``
    an address."""
    sig = types.void(span, p, g, s0, s1, s2, s3, x, v, n, scalars, scale, limit, key, offset)
    last = 5 + MAX_SLOTS  # the int64 arguments after span: p, g, the slots, x, v, n

    def codegen(context, builder, signature, args):
        pointer = ir.IntType(8).as_pointer()
        values = [ir.Constant(pointer, None)]
        values += [context.cast(builder, a, t, _I64)
                   for a, t in zip(args[1:last + 1], signature.args[1:last + 1])]
        values.append(builder.inttoptr(args[last + 1], pointer))
        values += [context.cast(builder, args[last + 2], signature.args[last + 2], _F64),
                   context.cast(builder, args[last + 3], signature.args[last + 3], _F64),
                   context.cast(builder, args[last + 4], signature.args[last + 4],
                                types.uint32),
                   context.cast(builder, args[last + 5], signature.args[last + 5], _I64)]
        fnty = ir.FunctionType(context.get_value_type(types.void), [v.type for v in values])
        builder.call(builder.inttoptr(args[0], fnty.as_pointer()), values)
        return context.get_dummy_value()
    return sig, codegen


@njit(**JIT_OPTIONS)
def _run_item(span, table, w, n_work, n_tensors, chunk, geometry, scalars, step):
    """Work item ``w``: from its start up to the next item's start. ``geometry``: the
    variant's slots, master slot, stochastic and average flags and element sizes
    (Variant.geometry)."""
    ns, master, random, average, p_size, g_size, s_size, x_size = geometry
    rows = ns + master + average  # slot rows of the table
    streams0 = (5 + rows) * n_tensors
    work0 = (6 + rows) * n_tensors
    sizes0 = (2 + rows) * n_tensors
    scales = table[(3 + rows) * n_tensors: (4 + rows) * n_tensors].view(np.float64)
    limits = table[(4 + rows) * n_tensors: streams0].view(np.float64)
    # One row of scalars for every tensor, or one per tensor (per-tensor reductions).
    row_bytes = scalars.strides[0] if scalars.shape[0] > 1 else 0
    item = table[work0 + w]
    t = item >> 32
    begin = (item & _CHUNK_MASK) * chunk
    t_stop = n_tensors
    stop = 0
    if w + 1 < n_work:
        after = table[work0 + w + 1]
        t_stop = after >> 32
        stop = (after & _CHUNK_MASK) * chunk
    while t < t_stop or (t == t_stop and begin < stop):
        n = table[sizes0 + t]
        end = n if t < t_stop else stop
        h = scalars.ctypes.data + t * row_bytes
        if end > begin:
            p = table[t] + begin * p_size
            g = table[n_tensors + t] + begin * g_size
            s0 = table[2 * n_tensors + t] + begin * s_size if ns > 0 else 0
            s1 = table[3 * n_tensors + t] + begin * s_size if ns > 1 else 0
            s2 = table[4 * n_tensors + t] + begin * s_size if ns > 2 else 0
            s3 = table[5 * n_tensors + t] + begin * s_size if ns > 3 else 0
            x = table[(2 + ns) * n_tensors + t] + begin * x_size if master else 0
            v = table[(2 + ns + master) * n_tensors + t] + begin * p_size if average else 0
            if random:
                base = random_bits.stream_base(table[streams0 + t], step)
                at = 0  # spans split where the high half of the element index changes
                while at < end - begin:
                    upto = min(end - begin, ((begin + at) // _SPAN + 1) * _SPAN - begin)
                    _call_span(span, p + at * p_size, g + at * g_size,
                               s0 + at * s_size if ns > 0 else 0,
                               s1 + at * s_size if ns > 1 else 0,
                               s2 + at * s_size if ns > 2 else 0,
                               s3 + at * s_size if ns > 3 else 0,
                               x + at * x_size if master else 0,
                               v + at * p_size if average else 0, upto - at, h,
                               scales[t], limits[t], random_bits.span_key(base, begin + at),
                               begin + at)
                    at = upto
            else:
                _call_span(span, p, g, s0, s1, s2, s3, x, v, end - begin, h, scales[t],
                           limits[t], np.uint32(0), begin)
        t += 1
        begin = 0


@njit(parallel=True, **JIT_OPTIONS)
def _run_parallel(span, table, n_tensors, chunk, geometry, scalars, step):
    rows = geometry[0] + geometry[1] + geometry[3]  # slot rows: rule, master, average
    n_work = table.shape[0] - (6 + rows) * n_tensors
    for w in prange(n_work):
        # np.int64: prange's index is unsigned, and _run_item would compile twice (it is
        # typed once with the loop's int64 index before the parallel transform).
        _run_item(span, table, np.int64(w), n_work, n_tensors, chunk, geometry, scalars, step)


@njit(**JIT_OPTIONS)
def _run_serial(span, table, n_tensors, chunk, geometry, scalars, step):
    rows = geometry[0] + geometry[1] + geometry[3]  # slot rows: rule, master, average
    n_work = table.shape[0] - (6 + rows) * n_tensors
    for w in range(n_work):
        _run_item(span, table, w, n_work, n_tensors, chunk, geometry, scalars, step)


def run(variant, table, n_tensors, chunk, scalars, step, spans=None):
    """Apply ``variant``'s rule to every element of every tensor in ``table``, the work
    items shared out between Numba's threads.

    ``scalars`` the rule's scalars as numbers (rounded to the compute type inside), one
    row for every tensor or a 2-D array of a row per tensor; ``step`` the 1-based step
    (int64), a key of stochastic rounding's bits; ``spans`` the maker of the span function
    (default :func:`span_function`; quantized state has its own,
    fusedopt/backends/cpu/quantized.py).
    """
    scalars = _rows(scalars)
    span = (spans or span_function)(variant, scalars.shape[1])
    # Work items handed out one at a time to whichever thread asks (config.CPU_DYNAMIC_ITEMS).
    # Numba's setting is per calling thread; set here rather than inside the jitted loop,
    # which could then not be cached.
    before = set_parallel_chunksize(1 if config.CPU_DYNAMIC_ITEMS else 0)
    try:
        _run_parallel(span.address, table, n_tensors, chunk, variant.geometry, scalars, step)
    finally:
        set_parallel_chunksize(before)


def run_serial(variant, table, n_tensors, chunk, scalars, step, spans=None):
    """:func:`run` on the calling thread, for tables of one work item (waking the thread
    pool would cost more than the work)."""
    scalars = _rows(scalars)
    span = (spans or span_function)(variant, scalars.shape[1])
    _run_serial(span.address, table, n_tensors, chunk, variant.geometry, scalars, step)


def _rows(scalars) -> np.ndarray:
    """``scalars`` as a C-ordered 2-D float64 array of rows (one row: every tensor's)."""
    if isinstance(scalars, tuple):  # one row, the usual step: one conversion, not three
        return np.array([scalars], np.float64)
    return np.ascontiguousarray(np.atleast_2d(np.asarray(scalars, dtype=np.float64)))


def cache_counts() -> tuple[int, int]:
    """(loaded from Numba's cache, compiled) over this process's loop functions."""
    hits = misses = 0
    for dispatcher in (_run_parallel, _run_serial):
        hits += sum(dispatcher.stats.cache_hits.values())
        misses += sum(dispatcher.stats.cache_misses.values())
    for function in _SPAN_FUNCTIONS:
        hits += function.cache_hits
        misses += 1 - function.cache_hits
    return hits, misses
