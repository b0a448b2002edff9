"""fusedopt: fused optimizer steps - one pass through memory per parameter tensor.

CUDA kernels (through CuPy) for CuPy arrays, Numba kernels for NumPy arrays, and an
unfused NumPy/CuPy baseline; Keras' API and formulas by default, PyTorch's on request.
Every registered optimizer is a class here (``fusedopt.Adam``, ``fusedopt.SGD``, ...).
"""

from __future__ import annotations

from .backends.cpu import threads as _cpu_threads

_cpu_threads.prepare_runtime()  # idle OpenMP threads sleep, set before Numba's pool starts

from . import checkpoint, functional, optimizers  # noqa: E402
from .algorithms.registry import REGISTRY  # noqa: E402
from .flat import FlatParams  # noqa: E402
from .optimizers import LossScaleOptimizer, Optimizer  # noqa: E402
from .optimizers.lookup import get, load  # noqa: E402

globals().update(optimizers.CLASSES)

__version__ = "0.1.0"

__all__ = ["FlatParams", "LossScaleOptimizer", "Optimizer", "REGISTRY", "__version__",
           "checkpoint", "functional", "get", "load", *optimizers.CLASSES]
