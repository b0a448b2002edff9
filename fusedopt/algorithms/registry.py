"""Every optimizer, by name: the registry that drives the public classes, the torch and
Keras doors, the dispatcher, the CUDA entry names (and so the compile and machine-code gates),
the CPU rules, the unfused baseline, the test matrix and the benchmark sweep.

Each family's module (fusedopt/algorithms/<family>.py) declares its optimizers in ``SPECS``;
:data:`FAMILIES` lists the modules. To add an optimizer, write its module and name it here
(README.md, "Adding an optimizer").
"""

from __future__ import annotations

from . import adadelta, adagrad, adam, adamax, lion, nadam, rmsprop, sgd
from .spec import CONVENTIONS, DTYPES, OptimizerSpec

#: The family modules, each with its ``SPECS``.
FAMILIES = (adam, sgd, rmsprop, adagrad, adadelta, adamax, nadam, lion)

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
