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
from .checkpoint import load  # noqa: E402
from .flat import FlatParams  # noqa: E402
from .optimizers import LossScaleOptimizer, Optimizer  # noqa: E402

globals().update(optimizers.CLASSES)

__version__ = "0.1.0"

__all__ = ["FlatParams", "LossScaleOptimizer", "Optimizer", "REGISTRY", "__version__",
           "checkpoint", "functional", "get", "load", *optimizers.CLASSES]


def _classes() -> dict[str, type]:
    return {cls.spec_name: cls for cls in Optimizer.__subclasses__()}


def get(identifier):
    """An optimizer from a name (``"adam"``), a config dict, or an optimizer (returned as is).

    A config dict is either ``get_config()``'s output plus a ``"class_name"`` key, or
    Keras' serialized form ``{"class_name": "Adam", "config": {...}}``.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    classes = _classes()
    if isinstance(identifier, str):
        key = identifier.lower().replace("_", "")
        if key not in classes:
            raise ValueError(f"unknown optimizer {identifier!r}; known: {', '.join(sorted(classes))}")
        return classes[key]()
    if isinstance(identifier, dict):
        if "class_name" not in identifier:
            raise ValueError("an optimizer config dict needs a 'class_name' key (e.g. 'Adam')")
        config = dict(identifier.get("config", {k: v for k, v in identifier.items()
                                                if k != "class_name"}))
        key = str(identifier["class_name"]).lower().replace("_", "")
        if key not in classes:
            raise ValueError(f"unknown optimizer class {identifier['class_name']!r}")
        return classes[key].from_config(config)
    raise TypeError(f"cannot make an optimizer from a {type(identifier).__name__}")
