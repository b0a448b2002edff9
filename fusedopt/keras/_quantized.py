"""Quantized optimizer state in fusedopt.keras (``state_dtype="q8"`` / ``"q4"``).

Keras makes an optimizer's variables in its ``build()``, each shaped and typed like its
model variable (``add_variable_from_reference``). With quantized state, the variables of a
model variable whose state the engine quantizes (fusedopt/memory/storage.py: at least
``min_quantized_size`` elements) are made instead as one ``uint8`` vector each: the slot's
blocks, an fp32 absmax and the codes (fusedopt/memory/quant.py), filled with the slot's
initial value. A smaller variable's slots are float32, as the engine keeps them, and so is
a slot the optimizer declares ``float_state`` (schedule-free's z): Keras makes a variable's
slots in the order its optimizer declares them, so the k-th slot variable made from a
model variable is the engine's k-th slot (Keras' own "average" and "gradient_accumulator"
variables aside). So no float32 copy of a quantized slot is ever allocated, and Keras
saves and loads the buffers with the model like any optimizer variable.
"""

from __future__ import annotations

import contextlib

from ..memory import quant as _quant
from ..memory.storage import check_min_quantized_size

#: What ``state_dtype`` takes in fusedopt.keras: None is Keras' own (each variable's dtype).
CHOICES = (None, *_quant.QUANTIZED)
#: The names of the variables Keras' own build() makes from each model variable.
KERAS_OWN = ("average", "gradient_accumulator")


class QuantizedState:
    """``state_dtype`` and ``min_quantized_size`` of a fusedopt.keras optimizer."""

    def __init__(self, class_name: str, state_dtype, min_quantized_size):
        if state_dtype not in CHOICES:
            raise ValueError(
                f"{class_name}: state_dtype must be None (Keras' own: each variable's "
                f"dtype), 'q8' or 'q4' (8- or 4-bit blockwise state: q8 with the power "
                f"map, q4 with the dynamic one), 'q8-dynamic' or 'q4-power' (the other "
                f"map), 'q8-bitsandbytes' (the dynamic map rounded as bitsandbytes "
                f"rounds), got {state_dtype!r}")
        self.state_dtype = state_dtype
        self.min_quantized_size = check_min_quantized_size(min_quantized_size)

    @property
    def active(self) -> bool:
        return self.state_dtype is not None

    def engine_options(self) -> dict:
        if not self.active:
            return {"state_dtype": "param"}  # Keras' variables in their model variable's dtype
        return {"state_dtype": self.state_dtype,
                "min_quantized_size": self.min_quantized_size}

    def config(self) -> dict:
        """fusedopt's keys of get_config(): only where set, so the defaults print as Keras'."""
        if not self.active:
            return {}
        return {"state_dtype": self.state_dtype,
                "min_quantized_size": self.min_quantized_size}

    @contextlib.contextmanager
    def slots(self, optimizer, engine, group_of):
        """Within it, ``optimizer.add_variable_from_reference`` makes each slot as the
        engine stores it: a uint8 buffer for a quantized one, float32 for a small one.
        ``group_of(variable)``: the engine group the variable will be stepped in."""
        if not self.active:
            yield
            return
        made = optimizer.add_variable_from_reference
        counts: dict = {}  # model variable -> its slot variables made so far

        def add_variable_from_reference(reference_variable, name=None, initializer="zeros"):
            param = reference_variable.value.detach()
            group = group_of(reference_variable)
            storage = engine.storage_of(0, param, group)
            coded = storage.quantized
            if coded and name not in KERAS_OWN:
                k = counts[id(reference_variable)] = counts.get(id(reference_variable), -1) + 1
                signed = engine.spec.signed_slots(engine.hypers[group].flags)
                coded = k >= len(signed) or signed[k] is not None  # None: float_state
            if not coded:
                dtype = storage.slot_dtype(None)  # the state dtype, float32 beside codes
                if dtype == str(reference_variable.dtype):
                    return made(reference_variable, name, initializer)
                return optimizer.add_variable(
                    shape=reference_variable.shape, initializer=initializer,
                    dtype=dtype, name=_name(reference_variable, name))
            size = _quant.FORMATS[storage.state].nbytes(param.numel())
            return optimizer.add_variable(shape=(size,), initializer="zeros", dtype="uint8",
                                          name=_name(reference_variable, name))

        optimizer.add_variable_from_reference = add_variable_from_reference
        try:
            yield
        finally:
            del optimizer.add_variable_from_reference  # the class's own again

    @staticmethod
    def fill(engine, param, group: int, variables: list) -> None:
        """Write the engine's initial state of ``param`` (its quantized blocks, each
        element the slot's initial value) into Keras' uint8 ``variables``."""
        import torch
        with torch.no_grad():
            for variable, initial in zip(variables, engine.initial_state(param, group)):
                variable.value.copy_(initial)


def _name(reference_variable, name) -> str:
    """Keras' name of a slot variable (``add_variable_from_reference``'s)."""
    name = name or "var"
    if hasattr(reference_variable, "path"):
        return f"{reference_variable.path.replace('/', '_')}_{name}"
    return f"{str(reference_variable.name).replace('/', '_').replace(':', '_')}_{name}"

