"""Keras' Adafactor variables as the engine's factored slots (fusedopt/memory/factored.py).

``keras.optimizers.Adafactor`` builds, per variable, ``r`` (shape ``shape[:-1]``), ``c``
(``shape[:-2] + shape[-1:]``) and ``v`` (the variable's shape) for a variable of rank >= 2,
and for a smaller one 0-d placeholders for ``r`` and ``c`` beside a whole ``v``. The engine
keeps r and c in torch's keepdim shapes: the same memory, viewed. A slot the variable's rank
does not have is an empty tensor to the engine: Keras' placeholders stay 0, and the ``v`` of
a factored variable, where Keras writes each step's estimate before reading it back in the
same step, is not written (nothing reads it between steps).
"""

from __future__ import annotations

import torch

from ..memory import factored as _factored


def engine_slots(spec, slots: tuple, tensors: list, param) -> list:
    """The engine's state arrays for the variable tensor ``param`` from Keras' ``tensors``
    (Keras' placeholders are int32: an absent slot takes the param's dtype)."""
    shape = tuple(param.shape)
    kinds = {s.name: s.shape for s in spec.slot_decls}
    made = []
    for name, tensor in zip(slots, tensors):
        kind = kinds.get(name)
        if kind is None:
            made.append(tensor)
        elif _factored.present(kind, shape):
            made.append(tensor.view(_factored.slot_shape(kind, shape)))
        else:
            made.append(torch.zeros(0, dtype=param.dtype, device=param.device))
    return made + list(tensors[len(slots):])
