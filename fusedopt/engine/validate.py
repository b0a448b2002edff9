"""Validation at the boundary: every check a step runs before any array is touched.

A bad pair at position 7 raises a clear error naming position 7 and the fix, and leaves
positions 0-6 as they were: the engine runs these checks on every pair before it launches.
Arrays are read through their kind (fusedopt/memory/arrays.py), so the same checks serve NumPy,
CuPy and the front doors' own arrays.
"""

from __future__ import annotations

import bisect

import numpy as np

from ..algorithms.registry import OptimizerSpec
from ..memory import factored as _factored
from ..memory import quant as _quant
from ..memory import storage as _storage
from ..memory.arrays import kind_of
from . import dispatch as _dispatch


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
        also = " (or ml_dtypes.bfloat16)" if "bfloat16" in spec.dtypes else ""
        raise TypeError(f"{where} has dtype {dtype}; {spec.name} supports "
                        f"{', '.join(spec.dtypes)} params: convert with "
                        f".astype(np.float32){also}")
    if pk.shape(param) != gk.shape(grad):
        raise ValueError(f"{where}: param and grad shapes differ: {pk.shape(param)} vs "
                         f"{gk.shape(grad)}")
    _storage.check_grad(where, dtype, gk.dtype(grad), mode)
    if not pk.writeable(param):
        raise ValueError(f"{where} is read-only; fusedopt updates params in place, so pass a "
                         "writeable array (e.g. param.copy())")
    if memory_order(param) is None:
        raise ValueError(f"{where} is a non-contiguous view (strides {pk.strides(param)}); "
                         "fusedopt updates params in place through their memory, so pass a "
                         "C-contiguous array (np.ascontiguousarray / cupy.ascontiguousarray) "
                         "and keep using that array")


def memory_order(a) -> str | None:
    """'C' for an array whose elements fill one block of memory in C order, 'F' for one that
    fills it in Fortran order only, None for a strided view (the elements have gaps).

    Every update is elementwise, so a Fortran-ordered param is updated as it lies, with its
    grad and state arrays in the same order (the same element at the same offset of each).
    """
    kind = kind_of(a)
    if kind.c_contiguous(a):
        return "C"
    try:
        return "F" if kind.f_contiguous(a) else None
    except AttributeError:  # a kind without Fortran order (e.g. torch tensors)
        return None


def check_state(position: int, param, slots, names, dtypes=None, shapes=()) -> None:
    """The state arrays given for ``param``: one per slot name, shaped like it (or as its
    declared factored kind in ``shapes`` says, fusedopt/memory/factored.py), of the slot's
    dtype (the param's unless ``dtypes`` says), writeable and C-contiguous."""
    if len(slots) != len(names):
        raise ValueError(f"param {position}: expected {len(names)} state arrays "
                         f"({', '.join(names)}), got {len(slots)}")
    pk = kind_of(param)
    dtypes = dtypes or [pk.dtype(param)] * len(names)
    shapes = tuple(shapes) + (None,) * (len(names) - len(shapes))
    for name, s, dtype, kind in zip(names, slots, dtypes, shapes):
        sk = kind_of(s)
        if dtype in _quant.FORMATS:
            want = (_quant.FORMATS[dtype].nbytes(pk.size(param)),)
            if sk.shape(s) != want or sk.dtype(s) != "uint8":
                raise ValueError(f"param {position}: {dtype} state {name!r} must be a uint8 "
                                 f"array of {want[0]} bytes (its blocks: "
                                 f"fusedopt/memory/quant.py), got {sk.shape(s)} {sk.dtype(s)}")
            continue
        want = _factored.slot_shape(kind, pk.shape(param))
        if sk.shape(s) != want or sk.dtype(s) != dtype:
            what = "the param's shape" if kind is None else f"its {kind} factor's shape"
            raise ValueError(f"param {position}: state {name!r} must match {what} "
                             f"{want} and dtype {dtype}, got {sk.shape(s)} {sk.dtype(s)}")
        if kind is not None:
            if not sk.writeable(s) or not sk.c_contiguous(s):
                raise ValueError(f"param {position}: state {name!r} must be writeable and "
                                 "C-contiguous")
            continue
        if not sk.writeable(s) or not same_order(s, param):
            order = "Fortran-ordered" if memory_order(param) == "F" else "C-contiguous"
            raise ValueError(f"param {position}: state {name!r} must be writeable and "
                             f"{order}, like its param")


def check_factored(position: int, param, spec) -> None:
    """A param of an optimizer with factored moments: C-contiguous (its rows and columns
    are its last two dimensions as they lie in memory)."""
    pk = kind_of(param)
    if len(pk.shape(param)) >= 2 and not pk.c_contiguous(param):
        raise ValueError(f"param {position}: {spec.class_name} factors the second moment "
                         "along the last two dimensions and needs a C-contiguous param, got "
                         "another memory order; pass a contiguous copy (.contiguous(), "
                         "np.ascontiguousarray)")


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


def same_order(a, param) -> bool:
    """``a`` lies in memory as ``param`` does: element k at offset k of both."""
    if memory_order(param) == "C":
        return kind_of(a).c_contiguous(a)
    return memory_order(a) is not None and kind_of(a).f_contiguous(a)


def contiguous(grad, param=None):
    """Gradients are only read: one that does not lie in memory as its ``param`` does (C
    order, or Fortran order for a Fortran-ordered param) is copied rather than refused."""
    kind = kind_of(grad)
    if param is None or memory_order(param) == "C":
        return grad if kind.c_contiguous(grad) else kind.contiguous(grad)
    if same_order(grad, param):
        return grad
    if isinstance(grad, np.ndarray):
        return np.asfortranarray(grad)
    import cupy
    return cupy.asfortranarray(grad)


def check_replacement(position: int, new, old) -> None:
    """``new`` can take ``old``'s place (``Engine.bind``): same shape, dtype, memory order,
    library and device, so that the state arrays of ``old`` fit it."""
    nk, ok = kind_of(new), kind_of(old)
    for what, a, b in (("shape", nk.shape(new), ok.shape(old)),
                       ("dtype", nk.dtype(new), ok.dtype(old)),
                       ("memory order", memory_order(new), memory_order(old)),
                       ("array library", nk.library(new), ok.library(old)),
                       ("device", nk.device(new), ok.device(old))):
        if a != b:
            raise ValueError(f"param {position}: the new param's {what} is {a}, the one it "
                             f"replaces has {b}; bind params like the ones the optimizer "
                             "was built with")


def _extent(a) -> tuple[int, int]:
    """[first byte, one past the last byte) that ``a``'s elements can touch."""
    kind = kind_of(a)
    start = end = kind.address(a)
    for dim, stride in zip(kind.shape(a), kind.strides(a)):
        if dim > 1:
            if stride < 0:
                start += (dim - 1) * stride
            else:
                end += (dim - 1) * stride
    return start, end + _itemsize(kind.dtype(a))


def _itemsize(dtype: str) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # bfloat16 and other ml_dtypes types
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, dtype)).itemsize


def _overlaps(a, b) -> bool:
    """True when ``a`` and ``b`` share an element's memory (NumPy: exactly; others: their
    extents overlap)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.shares_memory(a, b))
    return True


def _sized(arrays):
    return [(i, a) for i, a in enumerate(arrays) if kind_of(a).size(a)]


def check_distinct_memory(params, positions=None) -> None:
    """No two params share memory (two views of one buffer would each be updated with
    their own state, and the later write would win)."""
    positions = list(range(len(params))) if positions is None else list(positions)
    spans = sorted((*_extent(p), i) for i, p in _sized(params))
    for (s0, e0, i), (s1, e1, j) in zip(spans, spans[1:]):
        if s1 < e0 and _overlaps(params[i], params[j]):
            a, b = sorted((positions[i], positions[j]))
            raise ValueError(f"param {b} shares memory with param {a} (two views of one "
                             "buffer); each param needs memory of its own: pass one of them, "
                             "or a copy")


def check_no_aliasing(positions, params, grads) -> None:
    """No grad shares memory with a param of the same step.

    The fused pass reads each grad element while it writes the params, in an order that
    differs between backends (CUDA blocks run at once), so a grad that is its param, or a
    view of any param's memory, would give an answer that depends on that order. Refused,
    not copied: passing a param as a grad is nearly always a mistake that a silent copy
    would hide; a caller who means it passes ``grad.copy()``.
    """
    spans = sorted((*_extent(p), k) for k, p in _sized(params))
    starts = [s for s, _, _ in spans]
    for k, g in _sized(grads):
        g_start, g_end = _extent(g)
        for s, e, j in spans[max(bisect.bisect_right(starts, g_start) - 1, 0):]:
            if s >= g_end:
                break
            if e > g_start and _overlaps(g, params[j]):
                whose = "its own param" if j == k else f"param {positions[j]}"
                raise ValueError(f"param {positions[k]}: the grad shares memory with {whose} "
                                 "(it is the param itself, or a view of it); the fused pass "
                                 "reads the grads while it writes the params, so pass a copy "
                                 "(grad.copy())")


def same_layout(grad, param, grad_dtype=None) -> bool:
    """The usual step's grad: an array of its param's type and shape, of ``grad_dtype``
    (its library's dtype object; default: the param's dtype), in its param's memory order
    (C, or Fortran for a Fortran-ordered param), not the param itself, with the param still
    writeable and in that order. Anything else takes the full checks."""
    try:
        if grad is param or type(grad) is not type(param) or grad.shape != param.shape:
            return False
        if grad.dtype != (param.dtype if grad_dtype is None else grad_dtype):
            return False
        base = getattr(grad, "base", None)
        if base is not None and (base is param or base is getattr(param, "base", None)):
            return False  # a view that may be of the param's memory: checked in full
        kind = kind_of(param)
        if not kind.writeable(param):
            return False
        if kind.c_contiguous(param):
            return kind.c_contiguous(grad)
        return kind.f_contiguous(param) and kind.f_contiguous(grad)
    except AttributeError:
        return False



_RANGES: dict[str, tuple[float, float]] = {}


def _compute_range(dtype: str) -> tuple[float, float]:
    """(smallest normal, largest finite) of the type ``dtype`` params compute in: their own,
    float32 for 16-bit storage."""
    if dtype not in _RANGES:
        compute = np.dtype(dtype) if _itemsize(dtype) >= 4 else np.dtype(np.float32)
        info = np.finfo(compute)
        _RANGES[dtype] = (float(info.tiny), float(info.max))
    return _RANGES[dtype]


def check_scalars(name: str, scalars, dtype: str, grad_scale=None) -> None:
    """The step's scalars (from the hyperparameters, computed in double) fit the type the
    kernels compute ``dtype`` params in; so does the reciprocal of ``grad_scale``.

    A learning rate of 1e39 is a valid number but no float32: narrowed, it would turn every
    update into inf or NaN. torch.optim refuses it ("value cannot be converted to type float
    without overflow"); so does fusedopt, before anything changes.
    """
    tiny, top = _compute_range(dtype)
    # A sum first (one C loop: a step's scalars are checked at every step): within range,
    # every scalar is; else (a NaN, an inf, a large value, or large ones that add up past
    # the range) the loop below looks at each.
    within = sum(map(abs, scalars)) <= top
    for x in () if within else scalars:
        if not abs(x) <= top:
            raise ValueError(f"{name}: a step scalar computed from the hyperparameters is "
                             f"{x:g}, beyond the largest finite value of the {dtype} math "
                             f"({top:g}), so every update would be inf or NaN; use a smaller "
                             "learning_rate (or epsilon / weight_decay)")
    if grad_scale is not None and not tiny <= 1.0 / grad_scale <= top:
        raise ValueError(f"grad_scale={grad_scale:g}: its reciprocal {1.0 / grad_scale:g}, which "
                         f"unscales the grads, is outside the normal range of the {dtype} math "
                         f"[{tiny:g}, {top:g}]; use a loss scale between {1 / top:g} and "
                         f"{1 / tiny:g}")
