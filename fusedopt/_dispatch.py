"""The only place that picks a backend. ``select`` is a pure function of what it is given."""

from __future__ import annotations

from typing import Iterable

BACKENDS = ("auto", "cuda", "cpu", "unfused")


def array_kind(array) -> str:
    """'numpy', 'cupy', or the array's type name for anything else."""
    module = type(array).__module__.split(".")[0]
    if module in ("numpy", "cupy"):
        return module
    return type(array).__qualname__


def select(requested: str, kinds: Iterable[str]) -> str:
    """Backend for arrays of ``kinds`` when the user asked for ``requested``.

    CuPy arrays go to ``cuda`` and NumPy arrays to ``cpu``; an explicit backend wins (the
    backend then checks it can take the arrays); NumPy and CuPy arrays in one call are an
    error, never a silent copy.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    kinds = set(kinds)
    if len(kinds) > 1:
        raise TypeError(f"one call mixes array types {sorted(kinds)}; move every param and "
                        "grad to one device first (cupy.asarray or cupy.asnumpy)")
    if requested != "auto":
        return requested
    if kinds == {"cupy"}:
        return "cuda"
    return "cpu"


def backend_module(name: str):
    """The module implementing backend ``name`` (imported lazily: CuPy is optional)."""
    if name == "cuda":
        from ._cuda import launch
        return launch
    if name == "cpu":
        from ._cpu import backend
        return backend
    from . import _unfused_backend
    return _unfused_backend
