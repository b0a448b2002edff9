"""A CPU loop variant: an optimizer's element rule with its flags and storage frozen in, as
one compile-time argument of the loop (fusedopt/backends/cpu/loop.py). Its Numba type
carries them all, as the CUDA kernels take them as template arguments."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
from numba import types
from numba.core.extending import (
    NativeValue,
    models,
    register_model,
    typeof_impl,
    unbox,
)

from ...constants import KAHAN, MODES, PLAIN, REMAINDER, STOCHASTIC, WITH_MASTER_SLOT
from . import storage
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


def _sources_digest() -> str:
    """A digest of the source of every module whose code a compiled loop holds: this
    package's and the quantized formats' and maps' (fusedopt/memory/quant.py,
    quant_power.py).

    Numba's on-disk cache checks only the source of the function it caches. A loop inlines
    code from the other modules here, so a change to one of them alone (an upgrade, say)
    would leave the cache serving the old code. The digest is part of every variant's type,
    which is part of every cached loop's signature: any change compiles afresh."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    memory = here.parent.parent / "memory"
    for path in (*sorted(here.glob("*.py")), memory / "quant.py", memory / "quant_power.py"):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


#: See :func:`_sources_digest`.
SOURCES = _sources_digest()


def _rule_name(rule) -> str:
    return f"{rule.py_func.__module__}.{rule.py_func.__qualname__}"


class VariantType(types.Opaque):
    #: A type unpickled from an older cache index has no ``signed`` (nor ``sources``): the
    #: class default keeps its hash computable, so Numba can read that index and find it
    #: stale.
    signed: tuple = ()
    #: The :data:`SOURCES` digest the type was made under: a type unpickled from the cache
    #: index keeps its own, so a loop compiled from other sources never matches (with the
    #: module's digest in the key, it would match any type of the same fields).
    sources: str = ""

    def __init__(self, rule: str, flags: tuple, n_slots: int, codes: tuple, mode: int,
                 clamps: bool, average: bool, signed: tuple = ()):
        self.rule, self.flags, self.n_slots = rule, flags, n_slots
        self.codes, self.mode, self.clamps, self.average = codes, mode, clamps, average
        self.signed, self.sources = signed, SOURCES
        quantized = f", {signed}" if signed else ""
        super().__init__(name=f"Variant({rule}, {flags}, {n_slots}, {codes}, {mode}, "
                              f"{clamps}, {average}{quantized}, {SOURCES})")

    @property
    def key(self):
        return (self.rule, self.flags, self.n_slots, self.codes, self.mode, self.clamps,
                self.average, self.signed, self.sources)


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
    the last two scalars, ``momentum`` and ``1 - momentum``; ``signed``: for quantized
    state (a state code of ``storage.QUANTIZED``), whether each slot takes the signed map
    (None: a float32 slot, ``Slot.float_state``).
    """

    def __init__(self, rule, scalars_type, flags, n_slots: int, codes: tuple, mode: int,
                 clamps: bool = True, average: bool = False, signed: tuple = ()):
        name = _rule_name(rule)
        if _RULES.setdefault(name, rule) is not rule:  # e.g. two closures of one factory
            name = f"{name}#{id(rule)}"
            _RULES[name] = rule
        _SCALAR_TYPES[name] = scalars_type
        self.flags = tuple(int(f) for f in flags)
        self.n_slots, self.codes, self.mode = int(n_slots), tuple(codes), int(mode)
        self.clamps, self.average = bool(clamps), bool(average)
        self.signed = tuple(None if x is None else bool(x) for x in signed) \
            if self.quantized else ()
        if storage.F16 in self.codes and not storage.NATIVE_F16:
            name += "#f16-emulated"  # its own entry in Numba's on-disk cache
            _RULES[name] = rule
            _SCALAR_TYPES[name] = scalars_type
        # Numba's dispatcher reads ``_numba_type_`` before any other typing: the fast path.
        self._numba_type_ = VariantType(name, self.flags, self.n_slots, self.codes, self.mode,
                                        self.clamps, self.average, self.signed)
        # What the table walk needs to know of the variant, as int64s: its slots, 1 if a
        # master slot follows them, 1 if stochastic, 1 if an average slot follows, and the
        # bytes of a param (and average), grad, state and master-slot element.
        # A quantized slot's address is its base: its blocks are found from the element
        # index (fusedopt/memory/quant.py), so the table walk does not advance it.
        sizes = [np.dtype(d).itemsize for d in loop_dtypes(self.codes, self.mode)[:4]]
        if self.quantized:
            sizes[2] = 0
        self.geometry = tuple(np.int64(v) for v in (self.n_slots, self.mode in WITH_SLOT,
                                                     self.mode == STOCHASTIC, self.average,
                                                     *sizes))

    @property
    def quantized(self) -> bool:
        """Whether the state is quantized (q8, q4): stepped by its own span function."""
        return self.codes[2] in storage.QUANTIZED

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
                   len(spec.slots(flags)), codes, mode, clamps, average,
                   spec.signed_slots(tuple(flags)))


@typeof_impl.register(Variant)
def _typeof_variant(value, context):
    return value._numba_type_


@unbox(VariantType)
def _unbox_variant(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())
