"""An optimizer's rules with their variant flags and storage, as one compile-time argument
of the CPU kernels that are not the element loop: the reduction passes
(fusedopt/backends/cpu/reduce.py) and the factored ones (fusedopt/backends/cpu/factored.py).

Such a kernel is a module-level function compiled once per variant and kept in Numba's
on-disk cache, as the element loop is (fusedopt/backends/cpu/variant.py): its first argument's
Numba type names the spec, the flags, the storage codes, the mode and a digest of every
source the kernel inlines, and the overloads the kernel calls find the rules from it when
it is typed. (Closures over the rules, as these kernels were, compile afresh in every
process: seconds at each start.)
"""

from __future__ import annotations

import hashlib
import inspect

import numpy as np
from numba import types
from numba.core.extending import NativeValue, models, register_model, typeof_impl, unbox

from .rules import source_digest
from .variant import SOURCES

_SPECS: dict = {}  # (spec name, digest) -> spec, for the types below


def _digest(spec) -> str:
    text = source_digest(spec)
    if spec.factored is not None:
        declared = spec.factored
        text += "".join(inspect.getsource(fn) for fn in (
            declared.square, declared.moment, declared.estimate))
    return hashlib.sha256(f"{SOURCES}{text}".encode()).hexdigest()[:12]


class SpecType(types.Opaque):
    def __init__(self, spec: str, flags: tuple, codes: tuple, mode: int, digest: str):
        self.spec, self.flags, self.codes, self.mode = spec, flags, codes, mode
        self.digest = digest
        super().__init__(name=f"SpecVariant({spec}, {flags}, {codes}, {mode}, {digest})")

    @property
    def key(self):
        return self.spec, self.flags, self.codes, self.mode, self.digest


register_model(SpecType)(models.OpaqueModel)


class SpecVariant:
    """``spec`` with variant ``flags`` on storage ``codes`` (param, grad, state; see
    fusedopt/backends/cpu/storage.py) in ``mode``, for a kernel's first argument."""

    def __init__(self, spec, flags: tuple, codes: tuple, mode: int):
        digest = _digest(spec)
        _SPECS[spec.name, digest] = spec
        self._numba_type_ = SpecType(spec.name, tuple(int(x) for x in flags),
                                     tuple(int(c) for c in codes), int(mode), digest)


def spec_of(variant: SpecType):
    """The spec a SpecType names."""
    return _SPECS[variant.spec, variant.digest]


@typeof_impl.register(SpecVariant)
def _typeof_variant(value, context):
    return value._numba_type_


@unbox(SpecType)
def _unbox_variant(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


def compute_zero(variant: SpecType):
    """0 in the variant's compute type (float64 params: float64, else float32)."""
    from .storage import F64
    return np.float64(0) if variant.codes[0] == F64 else np.float32(0)
