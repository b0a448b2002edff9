"""Array kinds: what the engine reads of a param, a grad or a state array, whatever its library.

The engine and the backends see memory, not array libraries: an address, a dtype, a shape, a
place (host or a CUDA device). A kind says how to read those from its arrays and how to make
state arrays beside a param, without copying anything. NumPy and CuPy arrays share one kind
(their attributes agree); a front door for another library registers its own kind
(:func:`register`), e.g. ``fusedopt.torch`` for torch tensors.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .storage import numpy_dtype

#: The launch context of host arrays: nothing to enter (one shared, reusable instance).
HOST = contextlib.nullcontext()

class Kind:
    """How to read and allocate one library's arrays. Subclasses override what differs."""

    #: The array library, as the dispatcher and error messages name it.
    name = "array"

    def library(self, a) -> str:
        """'numpy', 'cupy', or this kind's name: what the dispatcher sees."""
        return self.name

    def is_array(self, a) -> bool:
        return hasattr(a, "dtype") and hasattr(a, "shape")

    def on_device(self, a) -> bool:
        """True for device memory (the CUDA backend's), False for host memory."""
        raise NotImplementedError

    def device(self, a) -> int | None:
        """The CUDA device ordinal holding ``a``, None on the host."""
        return None

    def dtype(self, a) -> str:
        """NumPy's name of the element type: 'float32', 'bfloat16', ..."""
        return np.dtype(a.dtype).name

    def shape(self, a) -> tuple:
        return tuple(int(d) for d in a.shape)

    def size(self, a) -> int:
        return int(np.prod(self.shape(a), dtype=np.int64))

    def c_contiguous(self, a) -> bool:
        return bool(a.flags.c_contiguous)

    def f_contiguous(self, a) -> bool:
        return bool(a.flags.f_contiguous)

    def writeable(self, a) -> bool:
        # CuPy's flags have no 'writeable': device arrays always are.
        return bool(getattr(a.flags, "writeable", True))

    def strides(self, a) -> tuple:
        return tuple(a.strides)

    def address(self, a) -> int:
        """The address of ``a``'s first element (host or device memory)."""
        raise NotImplementedError

    def zeros(self, like, dtype: str, fill: float = 0.0, shape=None):
        """A new array of ``like``'s shape (or ``shape``, C-ordered) and memory order, on
        its device, of ``dtype``, filled with ``fill``."""
        raise NotImplementedError

    def from_host(self, like, values: np.ndarray):
        """A new 1-D array of NumPy ``values`` on ``like``'s device (a quantized slot,
        fusedopt/memory/quant.py: bytes, not the param's shape)."""
        raise NotImplementedError

    def stack(self, like, shape: tuple, dtype: str):
        """A new C-contiguous zero array of ``shape`` and ``dtype`` on ``like``'s device:
        matrices of one shape, transformed together (Muon's updates)."""
        raise NotImplementedError

    def contiguous(self, a):
        """A C-contiguous copy of ``a`` (grads are only read, so a strided one is copied)."""
        raise NotImplementedError

    def astype(self, a, dtype: str):
        """A new C-contiguous array of ``a``'s values converted to ``dtype``, on its device
        (a float32 master from a 16-bit param: exact)."""
        raise NotImplementedError

    def to_host(self, a) -> np.ndarray:
        """A NumPy copy of ``a``."""
        raise NotImplementedError

    def copy_from_host(self, dst, src: np.ndarray) -> None:
        """Write NumPy ``src`` into ``dst`` in place (same shape; dtype converted)."""
        raise NotImplementedError

    def launch_context(self, device: int | None):
        """The context a backend launches in for arrays on ``device`` (its current device,
        its library's current stream)."""
        return contextlib.nullcontext()


class NdarrayKind(Kind):
    """NumPy arrays, CuPy arrays and anything with their attributes."""

    def library(self, a) -> str:
        module = type(a).__module__.split(".")[0]
        return module if module in ("numpy", "cupy") else type(a).__qualname__

    def on_device(self, a) -> bool:
        return not isinstance(a, np.ndarray)

    def device(self, a) -> int | None:
        if isinstance(a, np.ndarray):
            return None
        device = getattr(a, "device", None)
        return getattr(device, "id", None)

    def address(self, a) -> int:
        if isinstance(a, np.ndarray):
            return a.__array_interface__["data"][0]
        return a.data.ptr

    def zeros(self, like, dtype: str, fill: float = 0.0, shape=None):
        # In like's memory order (C, or Fortran for a Fortran-ordered param): the kernels
        # pair element k of the param with element k of each state array in memory.
        order = "F" if like.flags.f_contiguous and not like.flags.c_contiguous else "C"
        if shape is not None:
            order = "C"
        shape = like.shape if shape is None else shape
        dt = numpy_dtype(dtype)
        if isinstance(like, np.ndarray):
            return np.full(shape, fill, dtype=dt, order=order)
        with like.device:  # on the param's device, not the current one
            return _cupy().full(shape, fill, dtype=dt, order=order)

    def from_host(self, like, values: np.ndarray):
        if isinstance(like, np.ndarray):
            return np.array(values, copy=True)
        with like.device:
            return _cupy().asarray(values)

    def stack(self, like, shape: tuple, dtype: str):
        dt = numpy_dtype(dtype)
        if isinstance(like, np.ndarray):
            return np.zeros(shape, dtype=dt)
        with like.device:
            return _cupy().zeros(shape, dtype=dt)

    def contiguous(self, a):
        xp = np if isinstance(a, np.ndarray) else _cupy()
        return xp.ascontiguousarray(a)

    def astype(self, a, dtype: str):
        dt = numpy_dtype(dtype)
        if isinstance(a, np.ndarray):
            return np.ascontiguousarray(a.astype(dt))
        with a.device:
            return _cupy().ascontiguousarray(a.astype(dt))

    def to_host(self, a) -> np.ndarray:
        return a.get() if hasattr(a, "get") else np.array(a, copy=True)

    def copy_from_host(self, dst, src: np.ndarray) -> None:
        if isinstance(dst, np.ndarray):
            dst[...] = src
        else:
            dst.set(np.ascontiguousarray(src, dtype=dst.dtype))

    def launch_context(self, device: int | None):
        if device is None:
            return HOST
        return _cupy().cuda.Device(device)


def _cupy():
    import cupy  # deferred: fusedopt imports without CuPy
    return cupy



NDARRAY = NdarrayKind()

#: module root -> kind, for libraries whose arrays are not ndarray-like (front doors add theirs).
_KINDS: dict[str, Kind] = {}
#: type -> its kind, as found from its module (a step asks several times per array).
_BY_TYPE: dict[type, Kind] = {}


def register(module_root: str, kind: Kind) -> None:
    """Let the engine step arrays whose type lives in ``module_root`` (e.g. 'torch')."""
    _KINDS[module_root] = kind
    _BY_TYPE.clear()


def kind_of(a: Any) -> Kind:
    kind = _BY_TYPE.get(type(a))
    if kind is None:
        kind = _BY_TYPE[type(a)] = _KINDS.get(type(a).__module__.split(".")[0], NDARRAY)
    return kind


def foreign(a: Any) -> bool:
    """True for arrays of a registered kind (not NumPy or CuPy), which backends reach by
    address through their kind."""
    return type(a).__module__.split(".")[0] in _KINDS
