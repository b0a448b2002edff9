"""The Keras optimizers with fusedopt's update: Keras' classes, arguments and variables.

Each class is ``keras.optimizers.<Name>`` with :class:`~fusedopt.keras._fused.FusedOptimizer`
in front: construct it with Keras' arguments (and defaults), and it prints, saves and loads as
Keras' class does. ``state_attributes`` maps the fusedopt registry's state slots to the lists
Keras' ``build()`` creates, so the fused kernels update Keras' own optimizer variables.

Registered with ``keras.saving.register_keras_serializable(package="fusedopt")``: a saved
model names them ``fusedopt>Adam`` & co, and ``keras.saving.load_model`` finds them once
``fusedopt.keras`` is imported. An optimizer made from Keras' name after ``install()`` is an
instance of a subclass (:class:`saved_as_keras`) that saves as Keras' own class instead
(fusedopt/keras/_by_name.py).
"""

from __future__ import annotations

import keras
from keras import ops

from ..algorithms.registry import REGISTRY
from ._fused import FusedOptimizer
from ._muon import Muon
from ._peerless import keras_base
from ._peerless import state_attributes as peerless_attributes

_register = keras.saving.register_keras_serializable(package="fusedopt")


class _NadamHooks:
    """What Keras' Nadam keeps beside the fused state."""

    def _before_fused_update(self) -> None:
        # The fused rule takes the momentum product as a function of the step
        # (fusedopt/algorithms/nadam.py); Keras' ``u_product`` variable is still advanced,
        # so checkpoints hold what Keras' Nadam would hold.
        product = self._u_product
        step = ops.cast(self.iterations + 1, product.dtype)
        product.assign(product * self.beta_1 * (1.0 - 0.5 * ops.power(0.96, step)))


#: Keras-only behaviour of some classes: their methods go into the class itself.
_HOOKS = {"nadam": _NadamHooks}


def _keras_class(spec) -> type:
    """``keras.optimizers.<name>`` with :class:`FusedOptimizer` in front, for ``spec``; for an
    optimizer Keras does not ship, a Keras optimizer made from its declaration
    (fusedopt/keras/_peerless.py) takes that class's place."""
    door = spec.keras
    if door is None:
        door = {"name": spec.class_name, "state_attributes": peerless_attributes(spec)}
        peer = keras_base(spec)
        origin = (f"a Keras optimizer with ``fusedopt.{spec.class_name}``'s Keras-style "
                  "arguments and defaults (Keras has no such class), its config and one "
                  "variable per state slot")
    else:
        peer = getattr(keras.optimizers, door["name"])
        origin = (f"``keras.optimizers.{door['name']}``, fused: Keras' arguments, defaults, "
                  "config and variables")
    bases = (FusedOptimizer, peer)
    hooks = ({k: v for k, v in vars(_HOOKS[spec.name]).items() if not k.startswith("__")}
             if spec.name in _HOOKS else {})  # in the class: before FusedOptimizer's defaults
    doc = (f"{origin}, its update in one pass. The rule, as ``fusedopt.{spec.class_name}`` "
           f"has it:\n\n{spec.doc.split('Args:')[0].rstrip()}\n")
    cls = type(door["name"], bases, {
        "__doc__": doc, "__module__": __name__, "__qualname__": door["name"],
        "spec_name": spec.name, "state_attributes": dict(door["state_attributes"]), **hooks})
    return _register(cls)


#: Keras' lower-case names (``keras.optimizers.get("adam")``) -> the fused classes.
CLASSES = {spec.keras["name"].lower(): _keras_class(spec) for spec in REGISTRY.values()
           if spec.keras is not None}
CLASSES["muon"] = _register(Muon)
#: The optimizers Keras does not ship (RAdam, Rprop, ASGD, AdEMAMix, ...), by registry name:
#: not under Keras' names, so ``install()`` leaves them out. A pass other optimizers run
#: (schedule-free's train/eval switch, ``spec.public`` False) has no class here.
#: Muon is not made from its declaration: Keras' Muon gives its non-2-D variables (and
#: excluded layers) an AdamW step, so its class routes them to two engines
#: (fusedopt/keras/_muon.py), and it is added under Keras' name below.
PEERLESS = {spec.name: _keras_class(spec) for spec in REGISTRY.values()
            if spec.keras is None and spec.public and spec.matrix is None}
globals().update({cls.__name__: cls for cls in (*CLASSES.values(), *PEERLESS.values())})
#: The classes Keras has, under Keras' names (those install() takes over).
KERAS_OWN = {name: cls for name, cls in CLASSES.items()
             if hasattr(keras.optimizers, cls.__name__)}


class saved_as_keras:
    """The classes of optimizers made from Keras' names after ``install()``: ``Adam`` here is
    ``fusedopt.keras.Adam``, saved as ``keras.optimizers.Adam`` (fusedopt/keras/_by_name.py)."""


class by_name:
    """What ``install()`` puts under Keras' names (fusedopt/keras/_by_name.py)."""
