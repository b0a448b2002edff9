"""The only place that picks a backend. ``select`` is a pure function of what it is given."""

from __future__ import annotations

from typing import Iterable

BACKENDS = ("auto", "cuda", "cpu", "unfused")


def select(requested: str, kinds: Iterable[str], on_device: bool | None = None) -> str:
    """Backend for arrays of ``kinds`` (their libraries) when the user asked for ``requested``.

    Device arrays (CuPy's; ``on_device`` says so for other libraries) go to ``cuda`` and host
    arrays to ``cpu``; an explicit backend wins (the backend then checks it can take the
    arrays); arrays of two libraries or places in one call are an error, never a silent copy.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    kinds = set(kinds)
    if len(kinds) > 1:
        raise TypeError(f"one call mixes array types {sorted(kinds)}; move every param and "
                        "grad to one device first (cupy.asarray or cupy.asnumpy)")
    if requested != "auto":
        return requested
    if on_device is None:
        on_device = kinds == {"cupy"}
    return "cuda" if on_device else "cpu"


def backend_module(name: str):
    """The module implementing backend ``name`` (imported lazily: CuPy is optional)."""
    if name == "cuda":
        from ..backends.cuda import launch
        return launch
    if name == "cpu":
        from ..backends.cpu import backend
        return backend
    from ..backends import unfused as _unfused_backend
    return _unfused_backend
