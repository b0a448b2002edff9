"""Public optimizer classes: hyperparameters, state and config; the math is elsewhere.

One class per registered optimizer (fusedopt/algorithms/registry.py), made from its
declaration by :func:`~fusedopt.optimizers.classes.public_class`.
"""

from ..algorithms.registry import REGISTRY
from .base import Optimizer
from .classes import public_class
from .loss_scale import LossScaleOptimizer

#: class name -> class, every registered optimizer but the passes others run (spec.public).
CLASSES = {spec.class_name: public_class(spec) for spec in REGISTRY.values() if spec.public}
globals().update(CLASSES)

__all__ = ["Optimizer", *CLASSES, "LossScaleOptimizer"]
