"""fusedopt for Keras 3: Keras' optimizers with fusedopt's fused update.

``fusedopt.keras.Adam`` is ``keras.optimizers.Adam`` (same arguments, defaults, config,
variables and saved files) whose update is one fused fusedopt step over every variable of the
model, on Keras' torch backend (``KERAS_BACKEND=torch``), where Keras variables are torch
tensors updated in place: CPU tensors by the Numba kernels, CUDA tensors by the CUDA kernels.

    import fusedopt.keras
    model.compile(optimizer=fusedopt.keras.Adam(learning_rate=1e-3), loss=...)

    fusedopt.keras.install()             # or keep Keras' names:
    model.compile(optimizer="adam", loss=...)   # -> fusedopt.keras.Adam

Importing this module imports Keras (and torch); constructing an optimizer on another Keras
backend raises an error naming ``KERAS_BACKEND=torch``.
"""

from __future__ import annotations

from ._install import install, installed, uninstall
from .optimizers import CLASSES, PEERLESS

globals().update({cls.__name__: cls for cls in (*CLASSES.values(), *PEERLESS.values())})

__all__ = [*(cls.__name__ for cls in (*CLASSES.values(), *PEERLESS.values())), "install",
           "uninstall", "installed"]
