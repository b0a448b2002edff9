"""A stand-in for ``fusedopt.backends.cuda.runtime.CupyRuntime`` that runs the CUDA kernels on the CPU.

NumPy arrays play the part of device arrays. ``module(family, names)`` builds
kernels/<family>.cu with g++ (tests/cuda_host/build.py) and ``get_function(name)`` returns
a kernel called like ``cupy.RawKernel``: ``kernel(grid, block, args)``. Before it runs, a
launch is checked the way a GPU and CuPy would treat it:

- each argument is converted by CuPy's rules - a Python ``int`` becomes ``long long``, a
  ``float`` becomes ``double``, a ``bool`` a ``bool``, a NumPy scalar keeps its dtype, an
  array becomes a pointer to its dtype - and must then equal the parameter's C++ type
  (CuPy itself does not check: a ``double`` where the kernel reads a ``float`` is garbage);
- the launch shape must be one CUDA accepts (no empty grid, at most 1024 threads a block);
- for table-ABI kernels, the table must point inside arrays this runtime handed out, cover
  every chunk once and keep the vector loop 16-byte aligned (tests/cuda_host/table_check.py).

Every launch is recorded in ``launches`` as ``(name, grid, block)``, every upload counted
in ``uploads`` (and, by target buffer, in ``uploaded``) and its size in ``uploaded_bytes``
(and, by the buffer it lands in - the array a view belongs to - in ``uploaded_into``), so
tests can count them.

Reads from the device: ``read_later`` starts a copy the host collects later, as CuPy does
with a pinned buffer and an event. ``events="never"`` makes those copies never complete by
themselves, so the host can only have the value by waiting; ``waits`` counts every wait
(``Pending.result()`` on a copy not yet complete), the device-to-host reads a GPU would
stall on. A test that runs steps with ``events="never"`` and finds ``waits == 0`` has shown
that no step waited for the device.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from fusedopt.backends.cuda import source
from fusedopt.backends.cuda.runtime import Pending

from . import build, table_check

#: CUDA launch limits on every architecture fusedopt targets.
MAX_THREADS_PER_BLOCK = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)


def cupy_type(value) -> str:
    """The NumPy type name CuPy passes ``value`` as (``*`` marks a pointer)."""
    if isinstance(value, np.ndarray):
        return "*" + value.dtype.name
    if isinstance(value, np.generic):
        return value.dtype.name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, complex):
        return "complex128"
    raise TypeError(f"CuPy cannot pass a {type(value).__name__} to a kernel")


def _shape3(dims, what: str) -> tuple[int, int, int]:
    dims = (dims,) if isinstance(dims, int) else tuple(int(d) for d in dims)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {dims}")
    return (*dims, *(1,) * (3 - len(dims)))


class HostKernel:
    """One entry point of a host-built family, called as ``kernel(grid, block, args)``."""

    def __init__(self, runtime, library, index: int, name: str, signature: tuple[str, ...]):
        self.runtime, self.library, self.index = runtime, library, index
        self.name, self.signature = name, signature

    def _check_args(self, args) -> None:
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes {len(self.signature)} arguments, got {len(args)}")
        for i, (value, param) in enumerate(zip(args, self.signature)):
            if "?" in param:
                raise TypeError(f"{self.name}: parameter {i} has a type the host runtime cannot "
                                "check; add it to DtypeName in tests/cuda_host/launcher.h")
            passed = cupy_type(value)
            if passed != param:
                hint = (f"pass np.{param}(...)" if not param.startswith("*")
                        else f"pass an array of dtype {param[1:]}")
                raise TypeError(f"{self.name}: argument {i} is a {type(value).__name__}, which "
                                f"CuPy passes as {passed}, but the kernel's parameter is "
                                f"{param}; {hint}")

    def _check_shape(self, grid, block) -> None:
        if min(grid) < 1 or min(block) < 1:
            raise ValueError(f"{self.name}: CUDA refuses an empty launch, grid {grid} block "
                             f"{block} (invalid configuration argument)")
        if any(g > m for g, m in zip(grid, MAX_GRID)) or any(
                b > m for b, m in zip(block, MAX_BLOCK)):
            raise ValueError(f"{self.name}: grid {grid} or block {block} exceeds CUDA's limits")
        if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"{self.name}: {block} is more than {MAX_THREADS_PER_BLOCK} "
                             "threads a block")

    def __call__(self, grid, block, args, *, shared_mem: int = 0, **kwargs):
        grid, block, args = _shape3(grid, "grid"), _shape3(block, "block"), tuple(args)
        if shared_mem:
            raise ValueError(f"{self.name}: fusedopt kernels use no shared memory")
        self._check_shape(grid, block)
        self._check_args(args)
        if table_check.uses_table(self.signature):
            table_check.check(self.name, grid, args, self.runtime.find_buffer)
        self.runtime.launches.append((self.name, grid, block))
        keep = []  # the values' storage must outlive the call
        pointers = []
        for value, param in zip(args, self.signature):
            if param.startswith("*"):
                slot = ctypes.c_void_p(value.__array_interface__["data"][0])
            else:
                slot = np.array(value, dtype=param)
            keep.append(slot)
            pointers.append(ctypes.addressof(slot) if isinstance(slot, ctypes.c_void_p)
                            else slot.ctypes.data)
        argv = (ctypes.c_void_p * max(len(pointers), 1))(*pointers)
        dims = (ctypes.c_uint * 3)
        status = self.library.fusedopt_host_launch(self.index, dims(*grid), dims(*block), argv,
                                                   int(self.runtime.order == "reverse"))
        if status:
            raise RuntimeError(f"{self.name} failed on the host: "
                               f"{self.library.fusedopt_host_error().decode()}")


class HostModule:
    """The kernels of one family, like ``cupy.RawModule``."""

    def __init__(self, runtime, library_path: Path):
        lib = ctypes.CDLL(str(library_path))
        lib.fusedopt_host_name.restype = ctypes.c_char_p
        lib.fusedopt_host_signature.restype = ctypes.c_char_p
        lib.fusedopt_host_error.restype = ctypes.c_char_p
        lib.fusedopt_host_launch.restype = ctypes.c_int
        self.kernels = {}
        for i in range(lib.fusedopt_host_count()):
            name = lib.fusedopt_host_name(i).decode()
            signature = tuple(lib.fusedopt_host_signature(i).decode().split(","))
            self.kernels[name] = HostKernel(runtime, lib, i, name, signature)

    def get_function(self, name: str) -> HostKernel:
        if name not in self.kernels:
            raise KeyError(f"{name!r} is not an entry point of this module; it has "
                           f"{', '.join(self.kernels)}")
        return self.kernels[name]


class HostRuntime:
    """``fusedopt.backends.cuda.runtime`` interface over NumPy arrays and host-built kernels.

    ``order="reverse"`` runs blocks and threads last to first. ``sanitize=True`` builds with
    AddressSanitizer, which needs its runtime preloaded into the process
    (tests/cuda_host/sanitize.py does that in a subprocess). ``sources`` replaces a family's
    source text (broken copies, in tests); ``only`` (a name expression, or a set of them)
    builds just those entry points.
    """

    name = "host"
    xp = np  # device arrays are NumPy arrays

    def __init__(self, cache_dir: Path, *, order: str = "forward", sanitize: bool = False,
                 sources: dict[str, str] | None = None, only=None,
                 events: str = "immediate"):
        if order not in ("forward", "reverse"):
            raise ValueError(f"order must be 'forward' or 'reverse', got {order!r}")
        if events not in ("immediate", "never"):
            raise ValueError(f"events must be 'immediate' or 'never', got {events!r}")
        self.cache_dir, self.order, self.sanitize = Path(cache_dir), order, sanitize
        self.events = events
        self.waits = 0
        self.uploaded: dict[int, int] = {}  # id of the device buffer -> uploads into it
        self.sources = dict(sources or {})  # family -> replacement source text (tests)
        self.only = only
        self.launches: list[tuple[str, tuple, tuple]] = []
        self.uploads = 0
        self.uploaded_bytes = 0
        self.uploaded_into: dict[int, int] = {}  # id of the whole device buffer -> bytes
        # id -> (start, end, array) of every array handed out; holding the array keeps its
        # memory from being reused while a table may still point at it.
        self._buffers: dict[int, tuple[int, int, np.ndarray]] = {}
        self._modules: dict[str, HostModule] = {}

    # --- the runtime interface ------------------------------------------------------------
    def accepts(self, array) -> bool:
        return isinstance(array, np.ndarray)

    def address(self, array) -> int:
        return self._hand_out(array)

    def zeros(self, like, fill: float = 0.0):
        out = np.full(like.shape, fill, dtype=like.dtype)
        self._hand_out(out)
        return out

    def to_device(self, host_array, out=None):
        """A copy, as on a GPU: later changes to ``host_array`` do not reach the kernel."""
        self.uploads += 1
        self.uploaded_bytes += host_array.nbytes
        if out is not None and out.shape == host_array.shape:
            out[...] = host_array
            target = out
        else:
            target = np.array(host_array, copy=True)
            self._hand_out(target)
        self.uploaded[id(target)] = self.uploaded.get(id(target), 0) + 1
        root = id(target if target.base is None else target.base)
        self.uploaded_into[root] = self.uploaded_into.get(root, 0) + host_array.nbytes
        return target

    def set_flag(self, flags, slot: int, value) -> None:
        """``flags[slot] = (value != 0)``, a device-side operation (no read)."""
        flags[slot] = np.int32(np.asarray(value).reshape(()) != 0)

    def read_later(self, array) -> Pending:
        """A copy of ``array`` taken now (stream order: every launch so far has run), which
        the host may only collect without waiting when ``events`` is "immediate"."""
        value = np.array(array, copy=True).reshape(-1)[0]
        immediate = self.events == "immediate"

        def result():
            if not immediate:
                self.waits += 1
            return value
        return Pending(lambda: immediate, result)

    def module(self, family: str, name_expressions):
        if family not in self._modules:
            if self.only is not None:
                keep = {self.only} if isinstance(self.only, str) else set(self.only)
                name_expressions = [n for n in name_expressions if n in keep]
            text = self.sources.get(family) or source.source(family)
            label = f"{family}-modified" if family in self.sources else family
            path = build.build(label, text, name_expressions, self.cache_dir, self.sanitize,
                               cooperative=family not in build.optimizer_families())
            self._modules[family] = HostModule(self, path)
        return self._modules[family]

    # --- checks ---------------------------------------------------------------------------
    def _hand_out(self, array) -> int:
        start = array.__array_interface__["data"][0]
        self._buffers[id(array)] = (start, start + array.nbytes, array)
        return start

    def find_buffer(self, address: int, nbytes: int):
        """The handed-out array holding ``[address, address + nbytes)``, or None."""
        for start, end, array in self._buffers.values():
            if start <= address and address + nbytes <= end:
                return array
        return None
