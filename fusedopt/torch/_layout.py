"""How a param's memory reaches the engine when it is not a contiguous real tensor.

The engine steps memory elementwise: element k of the param with element k of its grad and
of each state array. Any param whose elements fill one block of memory without gaps or
overlaps (dense and non-overlapping: contiguous, channels_last, transposed, any permutation
of the dimensions) can therefore be stepped in place as that block, a 1-D view of its
storage span, so long as its grad and state lie in the same order: the same strides.
torch.optim gives state that order (``torch.empty_like(p, memory_format=torch.preserve_format)``
keeps a dense param's strides), and so does fusedopt: the engine's state is made for the
block, and handed out under the param's shape and strides.

A complex param is stepped as real pairs, as torch.optim's optimizers step it: every
update is elementwise on ``torch.view_as_real`` of the param, the grad and each moment, so
a complex64 param is a float32 param of twice the elements (Adam's second moment is kept per
real component, as torch keeps it), and its state is handed out as complex again
(``torch.view_as_complex``).

A grad in another order than its param (rare: autograd gives a dense param's grad the
param's strides) is copied into the param's order; grads are only read.
"""

from __future__ import annotations

import torch


def dense(t: torch.Tensor) -> bool:
    """True when ``t``'s elements fill ``t.numel()`` consecutive elements of memory exactly
    once (in some order of the dimensions): a permutation of a contiguous tensor."""
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_order(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` (of one shape) lie in memory alike: the same strides wherever a
    dimension has more than one element (a size-1 dimension's stride means nothing)."""
    return all(x == y for n, x, y in zip(a.shape, a.stride(), b.stride()) if n != 1)


def span(t: torch.Tensor) -> torch.Tensor:
    """The 1-D view of a dense tensor's block of memory (its elements in memory order)."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


class Layout:
    """The translation for one param that is not stepped as it is (see the module's
    docstring): complex, or dense but not contiguous, or both."""

    __slots__ = ("complex", "flat", "shape", "strides", "param")

    def __init__(self, param: torch.Tensor):
        self.complex = param.is_complex()
        real = torch.view_as_real(param) if self.complex else param
        self.flat = not real.is_contiguous()
        self.shape, self.strides = tuple(real.shape), tuple(real.stride())
        self.param = param  # the param's memory: what a grad in another order is copied like

    def inward(self, t: torch.Tensor) -> torch.Tensor:
        """The engine's view of ``t``, a tensor laid out as the param (same strides)."""
        if self.complex:
            t = torch.view_as_real(t)
        return span(t) if self.flat else t

    def grad(self, g: torch.Tensor, where: str) -> torch.Tensor:
        """The engine's view of grad ``g``, copied into the param's order when its strides
        differ."""
        if g.is_complex() != self.complex:  # torch allows it only with p.grad_dtype = None
            raise TypeError(f"{where}: the grad is {g.dtype} and the param "
                            f"{self.param.dtype}; give a complex param a complex grad")
        if not same_order(g, self.param):
            g = torch.empty_like(self.param, dtype=g.dtype).copy_(g)
        return self.inward(g)

    def like(self, t: torch.Tensor, where: str) -> torch.Tensor:
        """Saved state ``t`` (the param's shape, any order) copied into the param's order,
        keeping its dtype, then seen as the engine sees it."""
        if tuple(t.shape) != tuple(self.param.shape):
            raise ValueError(f"{where} has shape {tuple(t.shape)}, the param's memory "
                             f"{tuple(self.param.shape)}")
        if t.is_complex() != self.complex:
            raise ValueError(f"{where} is {t.dtype} and the param {self.param.dtype}: the "
                             "state of a complex param is complex, of a real param real")
        if not same_order(t, self.param):
            t = torch.empty_like(self.param, dtype=t.dtype).copy_(t)
        return self.inward(t)

    def outward(self, state: torch.Tensor) -> torch.Tensor:
        """The engine's state array ``state`` (made for the engine's view) as torch hands
        out the param's state: the param's shape and strides, complex for a complex param."""
        if self.flat:
            state = state.as_strided(self.shape, self.strides, state.storage_offset())
        return torch.view_as_complex(state) if self.complex else state


def of(param: torch.Tensor, matrices: bool = False) -> Layout | None:
    """The layout of ``param``'s memory (a local shard for a DTensor), or None where the
    engine steps it as it is (contiguous and real). ``matrices``: for an optimizer that
    transforms each param as a matrix (Muon), a transposed (Fortran-ordered) real matrix
    is stepped as it is too, its shape kept (its state is made with its strides:
    fusedopt/memory/torch_kind.py)."""
    if not param.is_complex() and param.is_contiguous():
        return None
    if matrices and not param.is_complex() and param.dim() == 2 \
            and param.t().is_contiguous():
        return None
    return Layout(param)

