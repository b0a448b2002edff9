"""The one loop every CPU optimizer runs through.

It walks the same launch table as the CUDA kernels (fusedopt/_table.py). Numba's threads
share out the work items, so one huge tensor and two hundred tiny ones both keep every core
busy. A CPU work item runs from its own start, ``(tensor, chunk)``, up to the next item's
start (or the end of the table), crossing into following tensors when the next item starts
in a later one: with one item per chunk that is exactly a CUDA block's range, and with the
packed tables of fusedopt/_table.py one item covers several small tensors. Per tensor it
hands plain array slices to a non-parallel inner loop that, per element, widens what it
loads (fusedopt/_cpu/storage.py), calls the optimizer's scalar rule and rounds what it
stores; with slices (not raw pointers) and unconditional stores LLVM vectorizes it.

The rule, its flags and the storage reach the loop as a :class:`Variant`, whose Numba type
carries them all, as the CUDA kernels take them as template arguments. So they are
constants in the compiled loop: LLVM drops the other variants' branches, each element
calls exactly one widening and one rounding per operand, and the call does not pay for
passing a jitted function as an argument.

Gradient clipping (fusedopt/_clip.py), and a loss scale's 1/s, happen here, not in the
rules: every grad is loaded as clamp(g * scale, -limit, limit) with its tensor's scale and
limit from the table (1 and +inf, exact no-ops, when there is nothing to clip).

How the param is kept (fusedopt/_storage.py): ``plain``, the param itself; ``master``, a
float32 master in the last table slot, from which the param is written (rounded to
nearest, ties away); ``remainder``, bfloat16 params with an int16 remainder in the last
slot, rebuilt into the float32 master and split again; ``kahan``, a compensation in the
param's dtype in the last slot, added to the param before the rule and refilled with what
the store rounded away; ``stochastic``, every 16-bit store rounded stochastically with the
random bits of fusedopt/_cpu/random_bits.py, keyed on the tensor's stream (a table row),
the step (an argument of :func:`run`) and the element's index.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import carray, njit, prange, types
from numba.core.extending import (NativeValue, intrinsic, models, overload, register_model,
                                  typeof_impl, unbox)

from . import random_bits, storage
from ._cache import JIT_OPTIONS

_CHUNK_MASK = 0xFFFFFFFF

#: Mode names (fusedopt/_storage.py) -> codes in a Variant.
PLAIN, MASTER, REMAINDER, KAHAN, STOCHASTIC = 0, 1, 2, 3, 4
MODE_CODES = {"plain": PLAIN, "master": MASTER, "remainder": REMAINDER, "kahan": KAHAN,
              "stochastic": STOCHASTIC}
#: Modes with a slot after the optimizer's.
WITH_SLOT = (MASTER, REMAINDER, KAHAN)
_SPAN = 1 << 32  # element hashes share their first half within a span of this many

#: rule name -> rule, for the Numba type of a Variant (which names its rule, so that the
#: type pickles the same in every process and Numba's on-disk cache finds it).
_RULES: dict = {}


def _rule_name(rule) -> str:
    return f"{rule.py_func.__module__}.{rule.py_func.__qualname__}"


class VariantType(types.Opaque):
    def __init__(self, rule: str, flags: tuple, n_slots: int, codes: tuple, mode: int):
        self.rule, self.flags, self.n_slots = rule, flags, n_slots
        self.codes, self.mode = codes, mode
        super().__init__(name=f"Variant({rule}, {flags}, {n_slots}, {codes}, {mode})")

    @property
    def key(self):
        return self.rule, self.flags, self.n_slots, self.codes, self.mode


register_model(VariantType)(models.OpaqueModel)


class Variant:
    """An optimizer rule with its variant flags and storage, as one compile-time argument.

    ``n_slots``: the rule's state slots; ``codes``: storage codes of the param, grad and
    state (fusedopt/_cpu/storage.py); ``mode``: PLAIN, MASTER, REMAINDER, KAHAN or
    STOCHASTIC.
    """

    def __init__(self, rule, flags, n_slots: int, codes: tuple, mode: int):
        name = _rule_name(rule)
        if _RULES.setdefault(name, rule) is not rule:  # e.g. two closures of one factory
            name = f"{name}#{id(rule)}"
            _RULES[name] = rule
        self.flags = tuple(int(f) for f in flags)
        self.n_slots, self.codes, self.mode = int(n_slots), tuple(codes), int(mode)
        # Numba's dispatcher reads ``_numba_type_`` before any other typing: the fast path.
        self._numba_type_ = VariantType(name, self.flags, self.n_slots, self.codes, self.mode)
        self._likes = None

    @property
    def table_slots(self) -> int:
        """Slot rows of its launch table: the rule's, plus the master slot if any."""
        return self.n_slots + (self.mode in WITH_SLOT)

    def likes(self) -> tuple:
        """Empty arrays of the param, grad, state, master-slot and compute dtypes the loop
        reads (they type the table's pointers and the scalars)."""
        if self._likes is None:
            p, g, s = (np.empty(0, storage.LOOP_DTYPES[c]) for c in self.codes)
            x = np.empty(0, {REMAINDER: np.int16, KAHAN: storage.LOOP_DTYPES[self.codes[0]]}
                         .get(self.mode, np.float32))
            compute = np.empty(0, np.float64 if self.codes[0] == storage.F64 else np.float32)
            self._likes = (p, g, s, x, compute)
        return self._likes


@functools.lru_cache(maxsize=None)
def specialize(rule, flags: tuple, n_slots: int, codes: tuple = (storage.F32,) * 3,
               mode: int = PLAIN) -> Variant:
    """``rule`` with its variant ``flags`` and storage frozen in: what :func:`run` takes."""
    return Variant(rule, flags, n_slots, codes, mode)


@typeof_impl.register(Variant)
def _typeof_variant(value, context):
    return value._numba_type_


@unbox(VariantType)
def _unbox_variant(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


# --- one element -----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _param_io(mode: int, code: int):
    """(get, put) of the param in ``mode``: its compute value, and storing a new one
    (``e``: the element's hash, used by STOCHASTIC only)."""
    load, store_even = storage.load(code), storage.store(code)
    store_away = storage.store(code, storage.NEAREST_AWAY)
    store_random, param_bits = storage.store_stochastic(code), random_bits.ARRAY_BITS[0]
    split, rebuild = storage.split_master, storage.rebuild_master
    if mode == MASTER:
        def get(p, x, i):
            return x[i]

        def put(p, x, i, value, e):
            x[i] = np.float32(value)
            p[i] = store_away(value)
    elif mode == REMAINDER:
        def get(p, x, i):
            return rebuild(p[i], x[i])

        def put(p, x, i, value, e):
            hi, remainder = split(np.float32(value))
            p[i] = hi
            x[i] = remainder
    elif mode == KAHAN:
        def get(p, x, i):
            return load(p[i]) + load(x[i])

        def put(p, x, i, value, e):
            rounded = store_even(value)
            p[i] = rounded
            x[i] = store_even(value - load(rounded))  # exact in float32, then rounded
    elif mode == STOCHASTIC:
        def get(p, x, i):
            return load(p[i])

        def put(p, x, i, value, e):
            p[i] = store_random(value, param_bits(e))
    else:
        def get(p, x, i):
            return load(p[i])

        def put(p, x, i, value, e):
            p[i] = store_even(value)
    options = dict(inline="always", error_model="numpy")
    return njit(**options)(get), njit(**options)(put)


@functools.lru_cache(maxsize=None)
def _element(variant):
    """The body of one element for ``variant`` (a VariantType), jitted, for an overload: its rule, flags and storage functions are free variables, constants to
    Numba, so everything inlines and LLVM folds the branches on them."""
    rule, flags, ns = _RULES[variant.rule], variant.flags, variant.n_slots
    pcode, gcode, scode = variant.codes
    get_p, put_p = _param_io(variant.mode, pcode)
    load_g, load_s = storage.load(gcode), storage.load(scode)
    random = variant.mode == STOCHASTIC
    store_s = storage.store_stochastic(scode) if random else storage.store(scode)
    bits0, bits1, bits2 = random_bits.ARRAY_BITS[1:4]
    element_hash = random_bits.element_hash
    zero = np.float64(0.0) if pcode == storage.F64 else np.float32(0.0)

    def run(i, p, g, s0, s1, s2, x, h, scale, limit, key, offset):
        # Clipping and a loss scale's 1/s: exact no-ops at scale 1 and limit +inf, so every
        # tensor takes this one path (one compiled loop, not two).
        gi = load_g(g[i]) * scale
        gi = limit if gi > limit else (-limit if gi < -limit else gi)
        a = load_s(s0[i]) if ns > 0 else zero
        b = load_s(s1[i]) if ns > 1 else zero
        c = load_s(s2[i]) if ns > 2 else zero
        pi, a, b, c = rule(get_p(p, x, i), gi, a, b, c, h, flags)
        e = element_hash(key, offset + i)  # unused (and dropped) unless STOCHASTIC
        put_p(p, x, i, pi, e)
        if random:
            if ns > 0:
                s0[i] = store_s(a, bits0(e))
            if ns > 1:
                s1[i] = store_s(b, bits1(e))
            if ns > 2:
                s2[i] = store_s(c, bits2(e))
        else:
            if ns > 0:
                s0[i] = store_s(a)
            if ns > 1:
                s1[i] = store_s(b)
            if ns > 2:
                s2[i] = store_s(c)
    return njit(inline="always", error_model="numpy")(run)


def _apply(variant, i, p, g, s0, s1, s2, x, h, scale, limit, key, offset):
    """Element ``i`` through the variant (resolved when the loop is compiled), its grad
    clamp(g * scale, -limit, limit); ``key`` and ``offset`` + i key its random bits."""


@overload(_apply, inline="always")
def _apply_variant(variant, i, p, g, s0, s1, s2, x, h, scale, limit, key, offset):
    run = _element(variant)

    def body(variant, i, p, g, s0, s1, s2, x, h, scale, limit, key, offset):
        run(i, p, g, s0, s1, s2, x, h, scale, limit, key, offset)
    return body


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s element type."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@intrinsic
def _narrow(typingctx, values, like):
    """The tuple of numbers ``values`` converted to ``like``'s element type.

    The same rounding as ``np.float32(x)`` on the host (round to nearest), done inside the
    compiled call so the caller can pass the scalars as the Python floats it computed.
    """
    target = like.dtype
    sig = types.UniTuple(target, len(values))(values, like)

    def codegen(context, builder, signature, args):
        items = [context.cast(builder, builder.extract_value(args[0], k), values[k], target)
                 for k in range(len(values))]
        return context.make_tuple(builder, signature.return_type, items)

    return sig, codegen


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


@njit(**JIT_OPTIONS)
def _run_span(variant, p, g, s0, s1, s2, x, h, scale, limit, key, offset):
    _prefer_wide_vectors()
    for i in range(p.shape[0]):
        _apply(variant, i, p, g, s0, s1, s2, x, h, scale, limit, key, offset)


def _layout(variant):
    """(rule slots, 1 if a master slot follows them else 0, 1 if stochastic else 0):
    constants of the variant."""


@overload(_layout, inline="always")
def _layout_variant(variant):
    n_slots, master = variant.n_slots, int(variant.mode in WITH_SLOT)
    random = int(variant.mode == STOCHASTIC)

    def body(variant):
        return n_slots, master, random
    return body


@njit(**JIT_OPTIONS)
def _run_item(variant, table, w, n_work, n_tensors, chunk, likes, h, step):
    """Work item ``w``: from its start up to the next item's start."""
    param_like, grad_like, state_like, master_like, compute_like = likes
    ns, master, random = _layout(variant)
    rows = ns + master  # slot rows of the table
    streams0 = (5 + rows) * n_tensors
    work0 = (6 + rows) * n_tensors
    sizes0 = (2 + rows) * n_tensors
    scales = table[(3 + rows) * n_tensors: (4 + rows) * n_tensors].view(np.float64)
    limits = table[(4 + rows) * n_tensors: streams0].view(np.float64)
    # A slot the variant does not use still needs an array; one made from a pointer has no
    # reference count, so passing it costs no atomic updates.
    unused = carray(_pointer(table[0], state_like), 0)
    no_master = carray(_pointer(table[0], master_like), 0)
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
        if end > begin:
            p = carray(_pointer(table[t], param_like), n)[begin:end]
            g = carray(_pointer(table[n_tensors + t], grad_like), n)[begin:end]
            s0 = unused
            s1 = unused
            s2 = unused
            x = no_master
            if ns > 0:
                s0 = carray(_pointer(table[2 * n_tensors + t], state_like), n)[begin:end]
            if ns > 1:
                s1 = carray(_pointer(table[3 * n_tensors + t], state_like), n)[begin:end]
            if ns > 2:
                s2 = carray(_pointer(table[4 * n_tensors + t], state_like), n)[begin:end]
            if master:
                x = carray(_pointer(table[(2 + ns) * n_tensors + t], master_like), n)[begin:end]
            scale, limit = _narrow((scales[t], limits[t]), compute_like)
            if random:
                base = random_bits.stream_base(table[streams0 + t], step)
                at = 0  # spans split where the high half of the element index changes
                while at < end - begin:
                    upto = min(end - begin, ((begin + at) // _SPAN + 1) * _SPAN - begin)
                    _run_span(variant, p[at:upto], g[at:upto], s0[at:upto] if ns > 0 else s0,
                              s1[at:upto] if ns > 1 else s1, s2[at:upto] if ns > 2 else s2,
                              x, h, scale, limit, random_bits.span_key(base, begin + at),
                              begin + at)
                    at = upto
            else:
                _run_span(variant, p, g, s0, s1, s2, x, h, scale, limit, np.uint32(0), begin)
        t += 1
        begin = 0


@njit(parallel=True, **JIT_OPTIONS)
def run(variant, table, n_tensors, chunk, likes, scalars, step):
    """Apply ``variant``'s rule to every element of every tensor in ``table``.

    ``likes``: empty arrays of the param, grad, state, master-slot and compute dtypes as
    the loop reads them (:meth:`Variant.likes`); ``scalars`` the rule's scalars as numbers
    (rounded to the compute type inside); ``step`` the 1-based step (int64), a key of
    stochastic rounding's bits.
    """
    h = _narrow(scalars, likes[4])
    ns, master, random = _layout(variant)
    n_work = table.shape[0] - (6 + ns + master) * n_tensors
    for w in prange(n_work):
        # np.int64: prange's index is unsigned, and _run_item would compile twice (it is
        # typed once with the loop's int64 index before the parallel transform).
        _run_item(variant, table, np.int64(w), n_work, n_tensors, chunk, likes, h, step)


@njit(**JIT_OPTIONS)
def run_serial(variant, table, n_tensors, chunk, likes, scalars, step):
    """:func:`run` on the calling thread, for tables of one work item (waking the thread
    pool would cost more than the work)."""
    h = _narrow(scalars, likes[4])
    ns, master, random = _layout(variant)
    n_work = table.shape[0] - (6 + ns + master) * n_tensors
    for w in range(n_work):
        _run_item(variant, table, w, n_work, n_tensors, chunk, likes, h, step)
