"""The array library's matmuls, for optimizers that transform whole matrices (Muon).

Elementwise work is fusedopt's own kernels; a matrix product is the array library's (BLAS
on the CPU through torch or NumPy, cuBLAS through torch or CuPy). :func:`ops_for` gives one
small namespace of batched operations over a stack of matrices (count, rows, cols), so that
an algorithm writes its iteration once (fusedopt/algorithms/muon.py) and one batched
product per operation covers every matrix of a shape.
"""

from __future__ import annotations

import sys

import numpy as np


class TorchOps:
    """Batched matrix operations on torch tensors (``bmm``/``baddbmm``: one call per
    operation for the whole stack)."""

    def __init__(self):
        import torch
        self.torch = torch

    def cast(self, x, dtype: str):
        return x.to(getattr(self.torch, dtype))

    def transposed(self, x):
        return x.transpose(-2, -1)

    def norms(self, x):
        """The Frobenius norm of each matrix, shaped (count, 1, 1), in ``x``'s dtype."""
        return self.torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)

    def at_least(self, x, low: float):
        return x.clamp(min=low)

    def mm(self, a, b):
        return self.torch.bmm(a, b)

    def add_mm(self, c, a, b, beta: float, alpha: float = 1.0):
        """``beta * c + alpha * (a @ b)`` in one call (torch's ``baddbmm``)."""
        return self.torch.baddbmm(c, a, b, beta=beta, alpha=alpha)

    def wrap(self, stack):
        return stack

    def store(self, stack, result) -> None:
        stack.copy_(result)


class ArrayOps:
    """Batched matrix operations on NumPy or CuPy arrays (``matmul`` on a stack: BLAS or
    cuBLAS batched products)."""

    def __init__(self, xp):
        self.xp = xp

    def cast(self, x, dtype: str):
        return x.astype(dtype)

    def transposed(self, x):
        return self.xp.swapaxes(x, -2, -1)

    def norms(self, x):
        return self.xp.sqrt(self.xp.sum(x * x, axis=(-2, -1), keepdims=True))

    def at_least(self, x, low: float):
        return self.xp.maximum(x, x.dtype.type(low))

    def mm(self, a, b):
        return self.xp.matmul(a, b)

    def add_mm(self, c, a, b, beta: float, alpha: float = 1.0):
        t = c.dtype.type
        return t(beta) * c + t(alpha) * self.xp.matmul(a, b)

    def wrap(self, stack):
        return stack

    def store(self, stack, result) -> None:
        stack[...] = result


class TorchOnArrays(TorchOps):
    """torch's batched products on a NumPy stack's memory (NumPy has no bfloat16 matmul).
    torch does not take ml_dtypes' bfloat16 arrays: their bits go through as uint16 and
    come back as a bfloat16 view of the same memory."""

    def wrap(self, stack):
        if stack.dtype.name == "bfloat16":
            return self.torch.from_numpy(stack.view(np.uint16)).view(self.torch.bfloat16)
        return self.torch.from_numpy(stack)


def ops_for(stack, dtype: str):
    """The operations for ``stack`` (a torch tensor, NumPy or CuPy array) when its matrices
    are transformed in ``dtype``."""
    module = type(stack).__module__.split(".")[0]
    if module == "torch":
        return TorchOps()
    if dtype == "bfloat16":
        if module != "numpy":
            raise ValueError("a bfloat16 matrix transform of CuPy arrays needs torch's "
                             "matmul (CuPy has no bfloat16 one): pass torch tensors "
                             "(fusedopt.torch) or use convention='keras' (float32)")
        if "torch" not in sys.modules:
            try:
                import torch  # noqa: F401
            except ImportError:
                raise ValueError("a bfloat16 matrix transform (torch's Muon convention) "
                                 "needs torch installed: NumPy has no bfloat16 matmul; "
                                 "install torch or use convention='keras'") from None
        return TorchOnArrays()
    return ArrayOps(np if module == "numpy" else _cupy())


def _cupy():
    import cupy  # deferred: fusedopt imports without CuPy
    return cupy
