"""Host copies of the Keras variables a fused step needs as numbers, without a device sync.

The engine computes each step's scalars (bias corrections, the learning rate) on the host in
double, so it needs ``iterations`` and the learning rate as Python numbers. On CUDA, reading a
Keras variable's tensor (``float(v)``) waits for the device: Keras' own optimizers never do
that. A :class:`HostValue` reads a variable once and then answers from its copy for as long as
the variable's tensor is unchanged, which torch tells without touching the data: every in-place
write (``assign``, ``assign_add``, ``load_own_variables``, ``set_weights``) bumps the tensor's
version counter (``tensor._version``), and a new tensor is a different object.

After a write whose result is known (Keras' own ``iterations += 1`` at the end of ``apply``),
:meth:`HostValue.wrote` records the new value with the new version, so a training loop reads
each variable once, when it is first used or after someone else changed it.
:func:`host_number` does the same for hyperparameters given as tensors (``beta_1``).
"""

from __future__ import annotations

from typing import Callable


class HostValue:
    """``variable``'s value as a Python number, read (``read(tensor)``) only when stale."""

    __slots__ = ("variable", "read", "_tensor", "_version", "_value")

    def __init__(self, variable, read: Callable):
        self.variable, self.read = variable, read
        self._tensor, self._version, self._value = None, -1, None

    def _current(self):
        tensor = self.variable.value
        return tensor, tensor._version

    def get(self):
        tensor, version = self._current()
        if tensor is not self._tensor or version != self._version:
            self._value = self.read(tensor)
            self._tensor, self._version = tensor, version
        return self._value

    def wrote(self, expected_before, value) -> None:
        """The caller's code has just written ``value`` over ``expected_before`` with one
        in-place write: keep it if exactly one write happened since the last read of
        ``expected_before``; else the copy stays stale and the next :meth:`get` reads."""
        tensor, version = self._current()
        if (tensor is self._tensor and version == self._version + 1
                and self._value == expected_before):
            self._value, self._version = value, version


class _Tensor:
    """A plain tensor as :class:`HostValue` reads a variable: through ``.value``."""

    __slots__ = ("value",)

    def __init__(self, tensor):
        self.value = tensor


def host_number(name: str, value, copies: dict):
    """Hyperparameter ``name`` as the engine takes it: a Python number.

    Keras' optimizers take a number, a 0-d tensor or a Keras variable (``beta_1=ops.
    convert_to_tensor(0.9)``); a tensor or variable holding one number is read through a
    :class:`HostValue` kept in ``copies``, so it is read again only after it changed. Anything
    else (``None``, a bool) is passed on for the engine's own checks.
    """
    import keras
    import numpy as np
    import torch

    if isinstance(value, keras.Variable):
        holder, tensor = value, value.value
    elif isinstance(value, torch.Tensor):
        holder, tensor = _Tensor(value), value
    elif isinstance(value, np.ndarray) or isinstance(value, np.generic):
        holder, tensor = None, value
    elif callable(value):
        raise TypeError(f"{name} must be a number or a tensor holding one, got the callable "
                        f"{value!r} (which Keras' torch backend cannot step either): pass "
                        f"its value, and to change it between steps assign optimizer.{name} "
                        "or pass a keras.Variable")
    else:
        return value
    if int(np.prod(tensor.shape)) != 1:
        raise ValueError(f"{name} must be a number or hold one number, got a "
                         f"{type(value).__name__} of shape {tuple(tensor.shape)}; pass one "
                         f"value for every variable (e.g. {name}=0.9)")
    if holder is None:
        return float(np.asarray(value).reshape(()))
    source, copy = copies.get(name, (None, None))
    if source is not value:  # a new tensor or variable: a new host copy
        copy = HostValue(holder, lambda t: float(t.detach().reshape(())))
        copies[name] = (value, copy)
    return copy.get()
