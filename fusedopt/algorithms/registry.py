"""Every optimizer, by name: the registry that drives the public classes, the torch and
Keras doors, the dispatcher, the CUDA entry names (and so the compile and machine-code gates),
the CPU rules, the unfused baseline, the test matrix and the benchmark sweep.

Each family's module (fusedopt/algorithms/<family>.py) declares its optimizers in ``SPECS``,
and every module of this package that does is a family (:data:`FAMILIES`, by module name):
to add an optimizer, write its module (README.md, "Adding an optimizer").
"""

from __future__ import annotations

import importlib
import pkgutil

from .spec import CONVENTIONS, DTYPES, OptimizerSpec


def _families() -> tuple:
    package = importlib.import_module(__package__)
    modules = (importlib.import_module(f"{__package__}.{info.name}")
               for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)
               if not info.ispkg)
    return tuple(m for m in modules if hasattr(m, "SPECS"))


#: The family modules, each with its ``SPECS``.
FAMILIES = _families()

REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def lookup(name: str) -> OptimizerSpec:
    key = name.lower().replace("_", "")
    if key not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]


for _family in FAMILIES:
    for _spec in _family.SPECS:
        register(_spec)

__all__ = ["CONVENTIONS", "DTYPES", "FAMILIES", "OptimizerSpec", "REGISTRY", "lookup",
           "register"]
