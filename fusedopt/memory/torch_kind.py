"""torch tensors as an array kind (fusedopt/memory/arrays.py): the engine steps them in place.

A CPU tensor goes to the CPU backend and a CUDA tensor to the CUDA backend, through their
memory (``data_ptr()``); state is made with torch, beside each param, so a front door can
hand it out as torch tensors. Registered by the front doors that step tensors
(``fusedopt.torch``, ``fusedopt.keras`` on the torch backend); importing this module imports
torch.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from . import arrays as _arrays

#: torch dtype -> NumPy's name for it (bfloat16 as ml_dtypes names it).
_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
          torch.bfloat16: "bfloat16", torch.int16: "int16", torch.int32: "int32",
          torch.int64: "int64", torch.uint8: "uint8", torch.int8: "int8", torch.bool: "bool",
          torch.complex64: "complex64", torch.complex128: "complex128"}
_DTYPES = {name: dtype for dtype, name in _NAMES.items()}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


class TorchKind(_arrays.Kind):
    """torch tensors (dense, strided). Sparse and complex ones are refused by the checks."""

    name = "torch"

    def library(self, a) -> str:
        return "torch.cuda" if a.is_cuda else "torch"

    def is_array(self, a) -> bool:
        return isinstance(a, torch.Tensor)

    def on_device(self, a) -> bool:
        return bool(a.is_cuda)

    def device(self, a) -> int | None:
        return a.device.index if a.is_cuda else None

    def dtype(self, a) -> str:
        return _NAMES.get(a.dtype, str(a.dtype).replace("torch.", ""))

    def shape(self, a) -> tuple:
        return tuple(int(d) for d in a.shape)

    def size(self, a) -> int:
        return int(a.numel())

    def c_contiguous(self, a) -> bool:
        return a.layout == torch.strided and a.is_contiguous()

    def f_contiguous(self, a) -> bool:
        return a.layout == torch.strided and a.dim() >= 1 and a.permute(
            *reversed(range(a.dim()))).is_contiguous()

    def writeable(self, a) -> bool:
        return True

    def strides(self, a) -> tuple:
        return tuple(s * a.element_size() for s in a.stride())

    def address(self, a) -> int:
        return int(a.data_ptr())

    def zeros(self, like, dtype: str, fill: float = 0.0, shape=None):
        if shape is not None:  # a factored slot (fusedopt/memory/factored.py): its own shape
            return torch.full(tuple(shape), fill, dtype=_DTYPES[dtype], device=like.device)
        # With like's strides (a dense like: contiguous, or a transposed matrix), as
        # torch.optim's preserve_format: the kernels pair element k of each in memory.
        made = torch.empty_like(like, dtype=_DTYPES[dtype], memory_format=torch.preserve_format)
        return made.fill_(fill)

    def from_host(self, like, values: np.ndarray):
        return torch.from_numpy(np.array(values, copy=True)).to(like.device)

    def stack(self, like, shape: tuple, dtype: str):
        return torch.zeros(shape, dtype=_DTYPES[dtype], device=like.device)

    def contiguous(self, a):
        return a.contiguous()

    def astype(self, a, dtype: str):
        return a.detach().to(_DTYPES[dtype]).contiguous()

    def to_host(self, a) -> np.ndarray:
        a = a.detach().to("cpu")
        if a.dtype == torch.bfloat16:
            import ml_dtypes
            return a.view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
        return a.numpy().copy()

    def copy_from_host(self, dst, src: np.ndarray) -> None:
        src = np.ascontiguousarray(src)
        if dst.dtype == torch.bfloat16:
            import ml_dtypes
            bits = torch.from_numpy(src.astype(ml_dtypes.bfloat16).view(np.int16))
            dst.view(torch.int16).copy_(bits.reshape(dst.shape))
        else:
            dst.copy_(torch.from_numpy(src).reshape(dst.shape))

    def launch_context(self, device: int | None):
        if device is None:
            return _arrays.HOST
        return _on_torch_stream(device)


@contextlib.contextmanager
def _on_torch_stream(device: int):
    """CuPy launches on torch's current stream of ``device``: kernels queue behind the
    backward pass that made the grads, and nothing waits for the host."""
    import cupy
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device), cupy.cuda.ExternalStream(stream.cuda_stream, device):
        yield


KIND = TorchKind()


def register() -> None:
    """Let the engine step torch tensors."""
    _arrays.register("torch", KIND)
