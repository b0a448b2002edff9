"""Routes: which registry entry steps which variables of a Keras optimizer, and how that
entry's hyperparameters are read off the optimizer.

A fusedopt.keras class has one route: its registry entry (``spec_name``) steps every
variable, its state slots are the lists that Keras' ``build()`` makes
(``state_attributes``), and each hyperparameter is the optimizer's attribute of the same
name. A Keras optimizer that gives some variables another rule (``keras.optimizers.Muon``:
AdamW for what is not a matrix) has one route per rule, each stepped by an engine of its own
(fusedopt/keras/_routed.py); such routes say which variables they take and translate
Keras' arguments into the entry's (fusedopt/keras/_muon.py).
"""

from __future__ import annotations

from ..algorithms.registry import lookup


class Route:
    """Registry entry ``spec_name`` over the variables :meth:`holds` takes.

    ``state_attributes``: slot -> the optimizer's attribute holding that slot's variables (a
    list, one entry per trainable variable). ``arguments``: registry hyperparameter -> the
    optimizer's attribute it is read from (default: every hyperparameter of the entry's
    Keras convention, under its own name); the others keep the entry's defaults. ``reads``:
    attributes :meth:`hyper` reads besides (the engine does not take them as they are).

    ``clips_globally``: the engine clips by ``global_clipnorm`` (the norm of every grad it
    steps). False where the optimizer's variables are split between engines: the global
    norm is then Keras' own clipping, over every grad, before the split.
    """

    clips_globally = True

    def __init__(self, spec_name: str, state_attributes: dict, arguments: dict | None = None,
                 reads: tuple = ()):
        self.spec_name = spec_name
        self.state_attributes = dict(state_attributes)
        if arguments is None:
            own = [h.name for h in lookup(spec_name).hypers if "keras" in h.conventions]
            arguments = dict(zip(own, own))
        self.arguments = dict(arguments)
        self.reads = (*self.arguments.values(), *reads)

    @property
    def names(self) -> dict:
        """The optimizer's attribute -> the registry's name, for the engine's messages."""
        return {door: name for name, door in self.arguments.items()}

    def holds(self, optimizer, variable) -> bool:
        """Whether this route steps ``variable`` (called once, when the optimizer is built)."""
        return True

    def before_step(self, optimizer, variables) -> None:
        """What the optimizer does to ``variables`` (this route's, in a step of ``apply``)
        after every engine has checked its part of the step and before any steps."""

    def hyper(self, optimizer, values: dict, decay: bool = True) -> dict:
        """The engine's hyperparameters, under the optimizer's attribute names, from
        ``values`` (each of :attr:`reads` as a number, and ``learning_rate``).
        ``decay=False``: without weight decay (Keras' ``update_step`` called on its own)."""
        if not decay and "weight_decay" in values:
            values = dict(values, weight_decay=None)
        return values
