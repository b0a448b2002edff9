"""fusedopt.torch under torch.compile: the step runs eagerly, at one graph break.

The step builds launch tables and calls Numba or CUDA kernels through memory addresses,
nothing a graph can hold: traced, it broke the graph some 20 times, took seconds to trace
and warned. Not traced (``torch.compiler.disable``), it is one break with its reason, and
compiled code around it (a training step's forward and backward) keeps its graphs.
``fullgraph=True`` is refused by torch.compile, naming the reason.
"""

from __future__ import annotations

import torch

REASON = ("fusedopt's step launches its fused kernels from Python by memory address and runs "
          "eagerly")


def untraced(cls) -> None:
    """``cls._fused`` (the step's body) wrapped by torch.compiler.disable, once, when the first
    optimizer is made or unpickled: the wrapper imports torch._dynamo, most of a second that
    an import of fusedopt.torch should not cost (a first step imports it anyway)."""
    if not getattr(cls._fused, "untraced", False):
        wrapped = torch.compiler.disable(cls._fused, reason=REASON)
        wrapped.untraced = True
        cls._fused = wrapped
