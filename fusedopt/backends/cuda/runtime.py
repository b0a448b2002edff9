"""How the CUDA backend reaches a device: through CuPy, or through a stand-in.

The backend's launch code (fusedopt/backends/cuda/launch.py) only talks to the current runtime.
On a GPU that is :class:`CupyRuntime`. The test suite installs a runtime that runs the same
kernels, compiled for the host, on NumPy arrays (tests/cuda_host), so the launch code -
argument packing, launch shapes, dtype dispatch, the multi-tensor tables - runs in CI.
"""

from __future__ import annotations

from ...memory.arrays import foreign, kind_of
from . import source


class CupyRuntime:
    """Kernels from ``cupy.RawModule``, compiled by NVRTC once per device and cached."""

    name = "cupy"

    def __init__(self):
        try:
            import cupy  # deferred: fusedopt imports without CuPy
        except ImportError as error:
            raise RuntimeError("backend 'cuda' needs CuPy: pip install 'fusedopt[cuda12]' or "
                               "'fusedopt[cuda13]' to match your CUDA driver") from error
        self.cupy = cupy
        self._modules = {}

    @property
    def xp(self):
        """The array module of this runtime's arrays (per-tensor scalars are made with it)."""
        return self.cupy

    def accepts(self, array) -> bool:
        """CuPy arrays, and device arrays of a registered kind (fusedopt/memory/arrays.py)."""
        if isinstance(array, self.cupy.ndarray):
            return True
        return foreign(array) and kind_of(array).on_device(array)

    def address(self, array) -> int:
        if isinstance(array, self.cupy.ndarray):
            return array.data.ptr
        return kind_of(array).address(array)

    def zeros(self, like, fill: float = 0.0):
        return self.cupy.full(like.shape, fill, dtype=like.dtype)

    def to_device(self, host_array, out=None):
        """``host_array`` on the device; into ``out`` (a view may be given) when it fits.

        A copy into ``out`` is queued on the current stream (torch's, for torch tensors)
        and does not wait for the device: a pageable source is staged before this returns,
        so the caller may change it at once."""
        if out is not None and out.shape == host_array.shape:
            out.set(host_array, stream=self.cupy.cuda.get_current_stream())
            return out
        return self.cupy.asarray(host_array)

    def set_flag(self, flags, slot: int, value) -> None:
        """``flags[slot] = (value != 0)`` on the device, for a device 0-d ``value`` (a CuPy
        array, or a tensor exposing ``__cuda_array_interface__``)."""
        value = self.cupy.asarray(value).reshape(())
        flags[slot: slot + 1] = (value != 0).astype(self.cupy.int32)

    def read_later(self, array) -> "Pending":
        """Start copying device ``array`` to pinned host memory on the current stream,
        without waiting; the result is there once the recorded event has completed."""
        import cupyx
        pinned = cupyx.empty_pinned(array.shape, array.dtype)
        array.get(out=pinned, blocking=False)
        event = self.cupy.cuda.Event(block=False, disable_timing=True)
        event.record()
        return Pending(lambda: event.done, lambda: (event.synchronize(), pinned[()]
                                                     if pinned.shape == () else pinned[0])[1])

    def module(self, family: str, name_expressions: tuple[str, ...]):
        key = (self.cupy.cuda.runtime.getDevice(), family)
        if key not in self._modules:
            self._modules[key] = self.cupy.RawModule(
                code=source.source(family),
                options=source.options(),
                name_expressions=name_expressions,
            )
        return self._modules[key]


class Pending:
    """A device value on its way to the host: ``done()`` asks without waiting; ``result()``
    waits if it must."""

    def __init__(self, done, result):
        self._done, self._result, self._value = done, result, None

    def done(self) -> bool:
        return self._value is not None or bool(self._done())

    def result(self):
        if self._value is None:
            self._value = (self._result(),)
        return self._value[0]


_current = None


def current():
    """The runtime in use (a CuPy one unless a test installed another)."""
    global _current
    if _current is None:
        _current = CupyRuntime()
    return _current


def install(runtime):
    """Use ``runtime`` from now on; returns the previous one (None if none was made yet)."""
    global _current
    previous, _current = _current, runtime
    return previous
