"""Validation at the boundary: every check a step runs before any array is touched.

A bad pair at position 7 raises a clear error naming position 7 and the fix, and leaves
positions 0-6 as they were: the engine runs these checks on every pair before it launches.
Arrays are read through their kind (fusedopt/_arrays.py), so the same checks serve NumPy,
CuPy and the front doors' own arrays.
"""

from __future__ import annotations

from . import _dispatch, _storage
from ._arrays import kind_of
from ._registry import OptimizerSpec


def check_pair(position: int, param, grad, spec: OptimizerSpec, where: str = "",
               mode: str = "plain") -> None:
    """Raise a clear error naming ``position`` if (param, grad) cannot be updated (``mode``:
    how the param is kept, which decides the grad dtypes it takes)."""
    where = where or f"param {position}"
    for what, a in (("param", param), ("grad", grad)):
        if not kind_of(a).is_array(a):
            raise TypeError(f"{where}: the {what} is a {type(a).__name__}, not a NumPy or CuPy "
                            "array; pass np.asarray(...) or cupy.asarray(...)")
    pk, gk = kind_of(param), kind_of(grad)
    dtype = pk.dtype(param)
    if dtype not in spec.dtypes:
        raise TypeError(f"{where} has dtype {dtype}; {spec.name} supports "
                        f"{', '.join(spec.dtypes)} params: convert with .astype(np.float32) "
                        "(or ml_dtypes.bfloat16)")
    if pk.shape(param) != gk.shape(grad):
        raise ValueError(f"{where}: param and grad shapes differ: {pk.shape(param)} vs "
                         f"{gk.shape(grad)}")
    _storage.check_grad(where, dtype, gk.dtype(grad), mode)
    if not pk.writeable(param):
        raise ValueError(f"{where} is read-only; fusedopt updates params in place, so pass a "
                         "writeable array (e.g. param.copy())")
    if not pk.c_contiguous(param):
        raise ValueError(f"{where} is a non-contiguous view (strides {pk.strides(param)}); "
                         "fusedopt updates params in place through their memory, so pass a "
                         "C-contiguous array (np.ascontiguousarray / cupy.ascontiguousarray) "
                         "and keep using that array")


def check_state(position: int, param, slots, names, dtypes=None) -> None:
    """The state arrays given for ``param``: one per slot name, shaped like it, of the slot's
    dtype (the param's unless ``dtypes`` says), writeable and C-contiguous."""
    if len(slots) != len(names):
        raise ValueError(f"param {position}: expected {len(names)} state arrays "
                         f"({', '.join(names)}), got {len(slots)}")
    pk = kind_of(param)
    dtypes = dtypes or [pk.dtype(param)] * len(names)
    for name, s, dtype in zip(names, slots, dtypes):
        sk = kind_of(s)
        if sk.shape(s) != pk.shape(param) or sk.dtype(s) != dtype:
            raise ValueError(f"param {position}: state {name!r} must match the param's shape "
                             f"{pk.shape(param)} and dtype {dtype}, got {sk.shape(s)} "
                             f"{sk.dtype(s)}")
        if not sk.c_contiguous(s) or not sk.writeable(s):
            raise ValueError(f"param {position}: state {name!r} must be writeable and "
                             "C-contiguous")


def resolve_backend(requested: str, params, grads, positions=None):
    """The backend module for these arrays, after checking it can take every one of them."""
    arrays = (*params, *grads)
    kinds = {kind_of(a).library(a) for a in arrays}
    on_device = any(kind_of(a).on_device(a) for a in arrays)
    backend = _dispatch.backend_module(_dispatch.select(requested, kinds, on_device))
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
    kind = kind_of(grad)
    return grad if kind.c_contiguous(grad) else kind.contiguous(grad)


def same_layout(grad, param, grad_dtype=None) -> bool:
    """The usual step's grad: an array of its param's type and shape, of ``grad_dtype``
    (its library's dtype object; default: the param's dtype), C-contiguous, with the param
    still writeable and C-contiguous. Anything else takes the full checks."""
    try:
        if type(grad) is not type(param) or grad.shape != param.shape:
            return False
        if grad.dtype != (param.dtype if grad_dtype is None else grad_dtype):
            return False
        kind = kind_of(param)
        return kind.c_contiguous(grad) and kind.c_contiguous(param) and kind.writeable(param)
    except AttributeError:
        return False

