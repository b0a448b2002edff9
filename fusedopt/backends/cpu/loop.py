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
from numba import carray, njit, prange, types
from numba.core.extending import (
    NativeValue,
    intrinsic,
    models,
    overload,
    register_model,
    typeof_impl,
    unbox,
)

from ...constants import KAHAN, MASTER, MODES, PLAIN, REMAINDER, STOCHASTIC, WITH_MASTER_SLOT
from . import random_bits, storage
from ._cache import JIT_OPTIONS
from .rules import element_rule

_CHUNK_MASK = 0xFFFFFFFF

#: Mode names (fusedopt/memory/storage.py) -> codes in a Variant (fusedopt/constants.py).
MODE_CODES = MODES
#: Modes with a slot after the optimizer's.
WITH_SLOT = WITH_MASTER_SLOT
_SPAN = 1 << 32  # element hashes share their first half within a span of this many

#: rule name -> rule, for the Numba type of a Variant (which names its rule, so that the
#: type pickles the same in every process and Numba's on-disk cache finds it).
_RULES: dict = {}
#: rule name -> the named-tuple type of its scalars (``k.lr``, ...).
_SCALAR_TYPES: dict = {}


def _rule_name(rule) -> str:
    return f"{rule.py_func.__module__}.{rule.py_func.__qualname__}"


class VariantType(types.Opaque):
    def __init__(self, rule: str, flags: tuple, n_slots: int, codes: tuple, mode: int,
                 clamps: bool, average: bool):
        self.rule, self.flags, self.n_slots = rule, flags, n_slots
        self.codes, self.mode, self.clamps, self.average = codes, mode, clamps, average
        super().__init__(name=f"Variant({rule}, {flags}, {n_slots}, {codes}, {mode}, "
                              f"{clamps}, {average})")

    @property
    def key(self):
        return (self.rule, self.flags, self.n_slots, self.codes, self.mode, self.clamps,
                self.average)


register_model(VariantType)(models.OpaqueModel)


class Variant:
    """An optimizer rule with its variant flags and storage, as one compile-time argument.

    ``n_slots``: the rule's state slots; ``codes``: storage codes of the param, grad and
    state (fusedopt/backends/cpu/storage.py); ``mode``: PLAIN, MASTER, REMAINDER, KAHAN or
    STOCHASTIC; ``clamps``: whether grads are scaled and clamped (clipping, a loss scale's
    1/s) by the table's scales and limit, or used as they are (a step with neither, where
    the scale is 1 and the limit +inf: the same values, without the three instructions a
    vector of them costs); ``average``: whether a moving average of the param (``use_ema``,
    fusedopt/engine/ema.py) follows in one more table slot, updated from the stored param with
    the last two scalars, ``momentum`` and ``1 - momentum``.
    """

    def __init__(self, rule, scalars_type, flags, n_slots: int, codes: tuple, mode: int,
                 clamps: bool = True, average: bool = False):
        name = _rule_name(rule)
        if _RULES.setdefault(name, rule) is not rule:  # e.g. two closures of one factory
            name = f"{name}#{id(rule)}"
            _RULES[name] = rule
        _SCALAR_TYPES[name] = scalars_type
        self.flags = tuple(int(f) for f in flags)
        self.n_slots, self.codes, self.mode = int(n_slots), tuple(codes), int(mode)
        self.clamps, self.average = bool(clamps), bool(average)
        if storage.F16 in self.codes and not storage.NATIVE_F16:
            name += "#f16-emulated"  # its own entry in Numba's on-disk cache
            _RULES[name] = rule
            _SCALAR_TYPES[name] = scalars_type
        # Numba's dispatcher reads ``_numba_type_`` before any other typing: the fast path.
        self._numba_type_ = VariantType(name, self.flags, self.n_slots, self.codes, self.mode,
                                        self.clamps, self.average)
        # What the table walk needs to know of the variant, as int64s: its slots, 1 if a
        # master slot follows them, 1 if stochastic, 1 if an average slot follows, and the
        # bytes of a param (and average), grad, state and master-slot element.
        sizes = (np.dtype(d).itemsize for d in loop_dtypes(self.codes, self.mode)[:4])
        self.geometry = tuple(np.int64(v) for v in (self.n_slots, self.mode in WITH_SLOT,
                                                     self.mode == STOCHASTIC, self.average,
                                                     *sizes))

    @property
    def table_slots(self) -> int:
        """Slot rows of its launch table: the rule's, the master slot if any, the average
        slot if any."""
        return self.n_slots + (self.mode in WITH_SLOT) + self.average


def loop_dtypes(codes: tuple, mode: int) -> tuple:
    """The param, grad, state, master-slot and compute dtypes the loop reads for storage
    ``codes`` in ``mode`` (16-bit floats as their bits)."""
    p, g, s = (storage.LOOP_DTYPES[c] for c in codes)
    x = {REMAINDER: np.int16, KAHAN: storage.LOOP_DTYPES[codes[0]]}.get(mode, np.float32)
    compute = np.float64 if codes[0] == storage.F64 else np.float32
    return p, g, s, x, compute


@functools.lru_cache(maxsize=None)
def specialize(spec, flags: tuple, codes: tuple = (storage.F32,) * 3, mode: int = PLAIN,
               clamps: bool = True, average: bool = False) -> Variant:
    """``spec``'s rule with its variant ``flags`` and storage frozen in: what :func:`run`
    takes."""
    return Variant(element_rule(spec, tuple(flags)), spec.Scalars, flags,
                   len(spec.slots(flags)), codes, mode, clamps, average)


@typeof_impl.register(Variant)
def _typeof_variant(value, context):
    return value._numba_type_


@unbox(VariantType)
def _unbox_variant(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


# --- one element -----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _param_io(mode: int, code: int):
    """(get, put) of the param in ``mode``, on stored values: ``get(pv, xv)`` the compute
    value of the stored param ``pv`` and master-slot element ``xv``; ``put(value, e, xv)``
    the new ``(param, master-slot)`` elements for the compute value ``value`` (``e``: the
    element's hash, used by STOCHASTIC only; ``xv`` comes back where there is no slot)."""
    load, store_even = storage.load(code), storage.store(code)
    store_away = storage.store(code, storage.NEAREST_AWAY)
    store_random, param_bits = storage.store_stochastic(code), random_bits.ARRAY_BITS[0]
    split, rebuild = storage.split_master, storage.rebuild_master
    if mode == MASTER:
        def get(pv, xv):
            return xv

        def put(value, e, xv):
            return store_away(value), np.float32(value)
    elif mode == REMAINDER:
        def get(pv, xv):
            return rebuild(pv, xv)

        def put(value, e, xv):
            return split(np.float32(value))
    elif mode == KAHAN:
        def get(pv, xv):
            return load(pv) + load(xv)

        def put(value, e, xv):
            rounded = store_even(value)
            return rounded, store_even(value - load(rounded))  # exact in float32, rounded
    elif mode == STOCHASTIC:
        def get(pv, xv):
            return load(pv)

        def put(value, e, xv):
            return store_random(value, param_bits(e)), xv
    else:
        def get(pv, xv):
            return load(pv)

        def put(value, e, xv):
            return store_even(value), xv
    options = dict(inline="always", error_model="numpy")
    return njit(**options)(get), njit(**options)(put)


def pairs(variant) -> bool:
    """Whether ``variant`` (a VariantType) loads and stores only bfloat16 elements, so that
    its loop can take them two at a time as 32-bit words (:func:`_element`). Not float16:
    its conversions, not its loads, set the pace (pairing measured no faster at 1M
    elements), and two of them per word tripled the loop's compile time."""
    pcode, gcode, scode = variant.codes
    return (pcode == gcode == storage.BF16 and (variant.n_slots == 0 or scode == storage.BF16)
            and variant.mode != MASTER and not variant.average)


@functools.lru_cache(maxsize=None)
def _element(variant):
    """One element's step for ``variant`` (a VariantType), jitted, for the overloads
    below: stored values in (param, grad, three state slots, master slot, average), stored
    values out (param, slots, master slot, average). Its rule, flags and storage functions
    are free variables, constants to Numba, so everything inlines and LLVM folds the
    branches on them; a slot the variant has not comes back as it went in.

    The average (``use_ema``) is updated from the param as stored, as Keras updates it from
    the variable after the step: ``momentum * average + (1 - momentum) * param`` with
    Keras' order of operations, in the compute type, rounded once to the param's dtype
    (to nearest even, whatever the param's own rounding)."""
    rule, ns = _RULES[variant.rule], variant.n_slots
    pcode, gcode, scode = variant.codes
    clamps, average = variant.clamps, variant.average
    get_p, put_p = _param_io(variant.mode, pcode)
    load_p, store_p = storage.load(pcode), storage.store(pcode)
    load_g, load_s = storage.load(gcode), storage.load(scode)
    random = variant.mode == STOCHASTIC
    store_s, store_r = storage.store(scode), storage.store_stochastic(scode)
    bits0, bits1, bits2 = random_bits.ARRAY_BITS[1:4]
    element_hash = random_bits.element_hash
    zero = np.float64(0.0) if pcode == storage.F64 else np.float32(0.0)

    @njit(inline="always", error_model="numpy")
    def one(pv, gv, av, bv, cv, xv, vv, h, ema, scale, limit, key, index):
        # Clipping and a loss scale's 1/s: exact no-ops at scale 1 and limit +inf, so every
        # tensor of a clamping variant takes this one path. clamp(gi, -limit, limit) with
        # NaN kept, as x86's MAXPS and MINPS are (each returns its second operand when
        # either is NaN): two vector instructions, and the multiply.
        low = -limit
        scaled = load_g(gv) * scale if clamps else load_g(gv)
        above = (low if low > scaled else scaled) if clamps else scaled
        gi = (limit if limit < above else above) if clamps else above
        a0 = load_s(av) if ns > 0 else zero
        b0 = load_s(bv) if ns > 1 else zero
        c0 = load_s(cv) if ns > 2 else zero
        pi, a, b, c = rule(get_p(pv, xv), gi, a0, b0, c0, zero, h)
        e = element_hash(key, index)  # unused (and dropped) unless STOCHASTIC
        p_new, x_new = put_p(pi, e, xv)
        a_new = (store_r(a, bits0(e)) if random else store_s(a)) if ns > 0 else av
        b_new = (store_r(b, bits1(e)) if random else store_s(b)) if ns > 1 else bv
        c_new = (store_r(c, bits2(e)) if random else store_s(c)) if ns > 2 else cv
        v_new = store_p(ema[0] * load_p(vv) + ema[1] * load_p(p_new)) if average else vv
        return p_new, a_new, b_new, c_new, x_new, v_new

    return one


def _half_of(dtype):
    """The jitted ``half(word, k)``: half ``k`` (0 low, 1 high) of a uint32 word as an
    element of ``dtype`` (uint16 or int16)."""
    return _signed_half if np.dtype(dtype) == np.int16 else _unsigned_half


def _half_ir(signed: bool):
    @intrinsic
    def half(typingctx, word, k):
        if word != types.uint32 or not isinstance(k, types.IntegerLiteral):
            return None
        high = k.literal_value == 1

        def codegen(context, builder, signature, args):
            w = builder.lshr(args[0], _WORD_HALF) if high else args[0]
            return builder.trunc(w, ir.IntType(16))
        return (types.int16 if signed else types.uint16)(word, k), codegen
    return half


_WORD_HALF = ir.Constant(ir.IntType(32), 16)
_unsigned_half, _signed_half = _half_ir(False), _half_ir(True)


@intrinsic
def _word(typingctx, low, high):
    """The uint32 word of two 16-bit elements (``low`` first in memory)."""
    if not all(isinstance(a, types.Integer) and a.bitwidth == 16 for a in (low, high)):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        return builder.or_(builder.zext(args[0], i32),
                           builder.shl(builder.zext(args[1], i32), _WORD_HALF))
    return types.uint32(low, high), codegen


def _apply(variant, i, p, g, s0, s1, s2, x, v, h, ema, scale, limit, key, offset):
    """Element ``i`` through the variant (resolved when the loop is compiled), its grad
    clamp(g * scale, -limit, limit); ``key`` and ``offset`` + i key its random bits."""


@overload(_apply, inline="always")
def _apply_variant(variant, i, p, g, s0, s1, s2, x, v, h, ema, scale, limit, key, offset):
    one, ns, master = _element(variant), variant.n_slots, variant.mode in WITH_SLOT
    average = variant.average
    p_dtype, _, s_dtype, x_dtype, _ = loop_dtypes(variant.codes, variant.mode)
    s_none, x_none, v_none = s_dtype(0), x_dtype(0), p_dtype(0)  # what an absent slot holds

    def body(variant, i, p, g, s0, s1, s2, x, v, h, ema, scale, limit, key, offset):
        new = one(p[i], g[i], s0[i] if ns > 0 else s_none, s1[i] if ns > 1 else s_none,
                  s2[i] if ns > 2 else s_none, x[i] if master else x_none,
                  v[i] if average else v_none, h, ema, scale, limit, key, offset + i)
        p[i] = new[0]
        if ns > 0:
            s0[i] = new[1]
        if ns > 1:
            s1[i] = new[2]
        if ns > 2:
            s2[i] = new[3]
        if master:
            x[i] = new[4]
        if average:
            v[i] = new[5]
    return body


def _apply_pair(variant, i, p, g, s0, s1, s2, x, h, ema, scale, limit, key, offset):
    """Elements 2i and 2i + 1 through a :func:`pairs` variant, the operands as arrays of
    32-bit words (each element's 16 bits a half of a word, the lower address the low
    half); a no-op for other variants.

    Taken two to a word, the elements reach LLVM's vector code as whole words: a shift
    and a mask widen the two halves, an or joins them, where one element at a time needs
    a lane-widening load and a narrowing store, instructions of the one shuffle port (bf16
    Adam with bf16 state: 114 instructions per 32 elements against 131, a quarter fewer on
    that port). The step itself is the same function, so the bits are the same."""


@overload(_apply_pair, inline="always")
def _apply_pair_variant(variant, i, p, g, s0, s1, s2, x, h, ema, scale, limit, key, offset):
    if not pairs(variant):  # typed, never run: the span function takes them one at a time
        def unpaired(variant, i, p, g, s0, s1, s2, x, h, ema, scale, limit, key, offset):
            pass
        return unpaired
    one, ns, master = _element(variant), variant.n_slots, variant.mode in WITH_SLOT
    p_dtype, g_dtype, s_dtype, x_dtype, _ = loop_dtypes(variant.codes, variant.mode)
    p_half, g_half, s_half, x_half = (_half_of(d) for d in (p_dtype, g_dtype, s_dtype,
                                                             x_dtype))
    none, none16 = np.uint32(0), p_dtype(0)  # no average: pairs() excludes it

    def body(variant, i, p, g, s0, s1, s2, x, h, ema, scale, limit, key, offset):
        wp, wg = p[i], g[i]
        wa = s0[i] if ns > 0 else none
        wb = s1[i] if ns > 1 else none
        wc = s2[i] if ns > 2 else none
        wx = x[i] if master else none
        index = offset + 2 * i
        p0, a0, b0, c0, x0, _ = one(p_half(wp, 0), g_half(wg, 0), s_half(wa, 0),
                                    s_half(wb, 0), s_half(wc, 0), x_half(wx, 0), none16, h,
                                    ema, scale, limit, key, index)
        p1, a1, b1, c1, x1, _ = one(p_half(wp, 1), g_half(wg, 1), s_half(wa, 1),
                                    s_half(wb, 1), s_half(wc, 1), x_half(wx, 1), none16, h,
                                    ema, scale, limit, key, index + 1)
        p[i] = _word(p0, p1)
        if ns > 0:
            s0[i] = _word(a0, a1)
        if ns > 1:
            s1[i] = _word(b0, b1)
        if ns > 2:
            s2[i] = _word(c0, c1)
        if master:
            x[i] = _word(x0, x1)
    return body


@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to ``like``'s element type."""
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

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


def _span(variant, p, g, s0, s1, s2, x, v, n, scalars, scale, limit, key, offset):
    """``n`` elements of one tensor through ``variant``, from the operands' addresses (0
    for an operand the variant has not; ``v`` the average); ``scalars`` points at the
    rule's scalars as float64 (then the average's two), ``offset`` is the first element's
    index in its tensor (a key of its random bits)."""
    _prefer_wide_vectors()
    ns, master, random, paired, average = _layout(variant)
    h = _rule_scalars(scalars[0], variant)
    ema = _average_scalars(scalars[0], variant)
    scale_, limit_ = _in_compute_type((scale, limit), variant)
    done = 0
    if paired and (p | g | s0 | s1 | s2 | x) & 3 == 0:  # every operand's words aligned
        words = n >> 1
        pw, gw = carray(_words_at(p), words), carray(_words_at(g), words)
        s0w = carray(_words_at(s0), words if ns > 0 else 0)
        s1w = carray(_words_at(s1), words if ns > 1 else 0)
        s2w = carray(_words_at(s2), words if ns > 2 else 0)
        xw = carray(_words_at(x), words if master else 0)
        for i in range(words):
            _apply_pair(variant, i, pw, gw, s0w, s1w, s2w, xw, h, ema, scale_, limit_, key,
                        offset)
        done = 2 * words
    # The elements left (all of them, unless taken in pairs above), one at a time.
    left = n - done
    p_ = carray(_param_at(variant, p), n)[done:]
    g_ = carray(_grad_at(variant, g), n)[done:]
    s0_ = carray(_state_at(variant, s0), n if ns > 0 else 0)[done:]
    s1_ = carray(_state_at(variant, s1), n if ns > 1 else 0)[done:]
    s2_ = carray(_state_at(variant, s2), n if ns > 2 else 0)[done:]
    x_ = carray(_master_at(variant, x), n if master else 0)[done:]
    v_ = carray(_param_at(variant, v), n if average else 0)[done:]
    for i in range(left):
        _apply(variant, i, p_, g_, s0_, s1_, s2_, x_, v_, h, ema, scale_, limit_, key,
               offset + done)


_I64, _F64 = types.int64, types.float64


def span_signature(variant: Variant, n_scalars: int):
    """The C signature of :func:`_span` for ``variant`` and ``n_scalars`` scalars."""
    return types.void(variant._numba_type_, *(_I64,) * 8,
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
def _call_span(typingctx, span, p, g, s0, s1, s2, x, v, n, scalars, scale, limit, key,
               offset):
    """Call the C function at address ``span`` (a :func:`span_function`) with these
    arguments: no variant (the function ignores its opaque first argument), ``scalars``
    an address."""
    sig = types.void(span, p, g, s0, s1, s2, x, v, n, scalars, scale, limit, key, offset)

    def codegen(context, builder, signature, args):
        pointer = ir.IntType(8).as_pointer()
        values = [ir.Constant(pointer, None)]
        values += [context.cast(builder, a, t, _I64)
                   for a, t in zip(args[1:9], signature.args[1:9])]
        values.append(builder.inttoptr(args[9], pointer))
        values += [context.cast(builder, args[10], signature.args[10], _F64),
                   context.cast(builder, args[11], signature.args[11], _F64),
                   context.cast(builder, args[12], signature.args[12], types.uint32),
                   context.cast(builder, args[13], signature.args[13], _I64)]
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
    h = scalars.ctypes.data
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
            p = table[t] + begin * p_size
            g = table[n_tensors + t] + begin * g_size
            s0 = table[2 * n_tensors + t] + begin * s_size if ns > 0 else 0
            s1 = table[3 * n_tensors + t] + begin * s_size if ns > 1 else 0
            s2 = table[4 * n_tensors + t] + begin * s_size if ns > 2 else 0
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
                               x + at * x_size if master else 0,
                               v + at * p_size if average else 0, upto - at, h,
                               scales[t], limits[t], random_bits.span_key(base, begin + at),
                               begin + at)
                    at = upto
            else:
                _call_span(span, p, g, s0, s1, s2, x, v, end - begin, h, scales[t],
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


def run(variant, table, n_tensors, chunk, scalars, step):
    """Apply ``variant``'s rule to every element of every tensor in ``table``, the work
    items shared out between Numba's threads.

    ``scalars`` the rule's scalars as numbers (rounded to the compute type inside);
    ``step`` the 1-based step (int64), a key of stochastic rounding's bits.
    """
    scalars = np.array(scalars, dtype=np.float64)
    _run_parallel(span_function(variant, scalars.shape[0]).address, table, n_tensors, chunk,
                  variant.geometry, scalars, step)


def run_serial(variant, table, n_tensors, chunk, scalars, step):
    """:func:`run` on the calling thread, for tables of one work item (waking the thread
    pool would cost more than the work)."""
    scalars = np.array(scalars, dtype=np.float64)
    _run_serial(span_function(variant, scalars.shape[0]).address, table, n_tensors, chunk,
                variant.geometry, scalars, step)


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
