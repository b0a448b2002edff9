"""The array library's matmuls, for optimizers that transform whole matrices (Muon).

Elementwise work is fusedopt's own kernels; a matrix product is the array library's (BLAS
on the CPU through torch or NumPy, cuBLAS through torch or CuPy). :func:`ops_for` gives one
small namespace of batched operations over a stack of matrices (count, rows, cols), so that
an algorithm writes its iteration once (fusedopt/algorithms/muon.py) and one batched
product per operation covers every matrix of a shape.

An operation given ``into`` (a name) writes its result into that buffer of the namespace's
workspace (a dict the engine keeps across steps, one for all the stacks of a group)
instead of a new array. A buffer is one flat array per name, grown when a call needs more
than it holds (or another dtype), and each call takes a view of its first elements: the
memory kept is that of the largest stack, not of every stack. Its result is the buffer
itself, valid until the next call that names it, so an iteration names two alternating
buffers for a value it reads while writing the next one. The results are the same values
as the allocating calls' (the same library call, with ``out=``).
"""

from __future__ import annotations

import math
import sys

import numpy as np


class _Workspace:
    """The named buffers of a namespace (see the module's docstring)."""

    def __init__(self, workspace: dict | None):
        self.workspace = {} if workspace is None else workspace

    def buffer(self, name: str, shape, dtype):
        size = math.prod(shape)
        flat = self.workspace.get(name)
        if flat is None or flat.shape[0] < size or flat.dtype != dtype:
            flat = self.workspace[name] = self._empty((size,), dtype)
        return flat[:size].reshape(tuple(shape))


class TorchOps(_Workspace):
    """Batched matrix operations on torch tensors (``bmm``/``baddbmm``: one call per
    operation for the whole stack)."""

    def __init__(self, workspace: dict | None = None):
        import torch
        self.torch = torch
        super().__init__(workspace)

    def _empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=dtype)

    def cast(self, x, dtype: str, into: str):
        """``x`` converted to ``dtype``, always a copy (the buffer ``into``)."""
        out = self.buffer(into, x.shape, getattr(self.torch, dtype))
        return out.copy_(x)

    def divide(self, x, d):
        """``x / d`` in place (``x`` a buffer of the workspace)."""
        return x.div_(d)

    def transposed(self, x):
        return x.transpose(-2, -1)

    def norms(self, x):
        """The Frobenius norm of each matrix, shaped (count, 1, 1), in ``x``'s dtype."""
        return self.torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)

    def at_least(self, x, low: float):
        return x.clamp(min=low)

    def mm(self, a, b, into: str | None = None):
        if into is None:
            return self.torch.bmm(a, b)
        out = self.buffer(into, (a.shape[0], a.shape[1], b.shape[2]), a.dtype)
        return self.torch.bmm(a, b, out=out)

    def add_mm(self, c, a, b, beta: float, alpha: float = 1.0, into: str | None = None):
        """``beta * c + alpha * (a @ b)`` in one call (torch's ``baddbmm``)."""
        if into is None:
            return self.torch.baddbmm(c, a, b, beta=beta, alpha=alpha)
        out = self.buffer(into, c.shape, c.dtype)
        return self.torch.baddbmm(c, a, b, beta=beta, alpha=alpha, out=out)

    def wrap(self, stack):
        return stack

    def store(self, stack, result) -> None:
        stack.copy_(result)


class ArrayOps(_Workspace):
    """Batched matrix operations on NumPy or CuPy arrays (``matmul`` on a stack: BLAS or
    cuBLAS batched products)."""

    def __init__(self, xp, workspace: dict | None = None):
        self.xp = xp
        super().__init__(workspace)

    def _empty(self, shape, dtype):
        return self.xp.empty(shape, dtype)

    def cast(self, x, dtype: str, into: str):
        out = self.buffer(into, x.shape, np.dtype(dtype))
        out[...] = x
        return out

    def divide(self, x, d):
        return self.xp.divide(x, d, out=x)

    def transposed(self, x):
        return self.xp.swapaxes(x, -2, -1)

    def norms(self, x):
        return self.xp.sqrt(self.xp.sum(x * x, axis=(-2, -1), keepdims=True))

    def at_least(self, x, low: float):
        return self.xp.maximum(x, x.dtype.type(low))

    def mm(self, a, b, into: str | None = None):
        if into is None:
            return self.xp.matmul(a, b)
        out = self.buffer(into, (a.shape[0], a.shape[1], b.shape[2]), a.dtype)
        return self.xp.matmul(a, b, out=out)

    def add_mm(self, c, a, b, beta: float, alpha: float = 1.0, into: str | None = None):
        t = c.dtype.type
        if into is None:
            return t(beta) * c + t(alpha) * self.xp.matmul(a, b)
        out = self.mm(a, b, into)
        out *= t(alpha)
        out += t(beta) * c
        return out

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


def ops_for(stack, dtype: str, workspace: dict | None = None):
    """The operations for ``stack`` (a torch tensor, NumPy or CuPy array) when its matrices
    are transformed in ``dtype``; ``workspace``: the stack's buffers, kept across steps."""
    module = type(stack).__module__.split(".")[0]
    if module == "torch":
        return TorchOps(workspace)
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
        return TorchOnArrays(workspace)
    return ArrayOps(np if module == "numpy" else _cupy(), workspace)


def _cupy():
    import cupy  # deferred: fusedopt imports without CuPy
    return cupy
