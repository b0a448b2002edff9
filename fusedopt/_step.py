"""One optimizer step over a list of (param, grad, state) triples: validate, group, launch.

Shared by the optimizer classes and the functional API. Everything is checked before any
array is touched, so a bad pair at position 7 leaves positions 0-6 as they were.
"""

from __future__ import annotations

import numpy as np

from . import _dispatch
from ._clip import NONE, step_groups
from ._registry import OptimizerSpec


def _shape(a) -> tuple:
    return tuple(int(d) for d in a.shape)


def check_pair(position: int, param, grad, spec: OptimizerSpec) -> None:
    """Raise a clear error naming ``position`` if (param, grad) cannot be updated."""
    where = f"param {position}"
    for what, a in (("param", param), ("grad", grad)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{where}: the {what} is a {type(a).__name__}, not a NumPy or CuPy "
                            "array; pass np.asarray(...) or cupy.asarray(...)")
    dtype = np.dtype(param.dtype).name
    if dtype not in spec.dtypes:
        raise TypeError(f"{where} has dtype {dtype}; {spec.name} supports "
                        f"{', '.join(spec.dtypes)}: convert with .astype(np.float32) and keep "
                        "the float32 copy as the master weights")
    if _shape(grad) != _shape(param):
        raise ValueError(f"{where}: param and grad shapes differ: {_shape(param)} vs {_shape(grad)}")
    if np.dtype(grad.dtype) != np.dtype(param.dtype):
        raise TypeError(f"{where}: grad dtype {np.dtype(grad.dtype).name} differs from param "
                        f"dtype {dtype}; cast the grad with .astype({dtype})")
    flags = getattr(param, "flags", None)
    if flags is not None and not _writeable(flags):
        raise ValueError(f"{where} is read-only; fusedopt updates params in place, so pass a "
                         "writeable array (e.g. param.copy())")
    if flags is not None and not flags.c_contiguous:
        raise ValueError(f"{where} is a non-contiguous view (strides {tuple(param.strides)}); "
                         "fusedopt updates params in place through their memory, so pass a "
                         "C-contiguous array (np.ascontiguousarray / cupy.ascontiguousarray) "
                         "and keep using that array")


def _writeable(flags) -> bool:
    # CuPy's flags have no 'writeable': device arrays always are.
    return getattr(flags, "writeable", True)


def check_state(position: int, param, slots, names) -> None:
    if len(slots) != len(names):
        raise ValueError(f"param {position}: expected {len(names)} state arrays "
                         f"({', '.join(names)}), got {len(slots)}")
    for name, s in zip(names, slots):
        if _shape(s) != _shape(param) or np.dtype(s.dtype) != np.dtype(param.dtype):
            raise ValueError(f"param {position}: state {name!r} must match the param's shape "
                             f"{_shape(param)} and dtype {np.dtype(param.dtype).name}, got "
                             f"{_shape(s)} {np.dtype(s.dtype).name}")
        if not s.flags.c_contiguous or not _writeable(s.flags):
            raise ValueError(f"param {position}: state {name!r} must be writeable and "
                             "C-contiguous")


def resolve_backend(requested: str, params, grads, positions=None):
    """The backend module for these arrays, after checking it can take every one of them."""
    kinds = {_dispatch.array_kind(a) for a in (*params, *grads)}
    backend = _dispatch.backend_module(_dispatch.select(requested, kinds))
    for i, (p, g) in enumerate(zip(params, grads)):
        for what, a in (("param", p), ("grad", g)):
            if not backend.accepts(a):
                pos = positions[i] if positions is not None else i
                raise TypeError(f"param {pos}: backend {backend.name!r} cannot take the {what}, "
                                f"a {type(a).__module__}.{type(a).__name__}; CuPy arrays go to "
                                "'cuda', NumPy arrays to 'cpu' or 'unfused'")
    return backend


def contiguous(grad):
    """Gradients are only read: a non-contiguous one is copied rather than refused."""
    if grad.flags.c_contiguous:
        return grad
    if _dispatch.array_kind(grad) == "cupy":
        import cupy
        return cupy.ascontiguousarray(grad)
    return np.ascontiguousarray(grad)


def run(spec, flags, scalars, backend, groups, grads_by_group, clipping=NONE) -> None:
    """Launch every group (one kernel launch or Numba call each), clipping as asked."""
    step_groups(backend, spec, flags, scalars, groups, grads_by_group, clipping)
