"""fusedopt.torch: drop-in ``torch.optim`` optimizers stepped by fusedopt's fused kernels.

    import fusedopt.torch
    opt = fusedopt.torch.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

Each class is a ``torch.optim.Optimizer`` with torch's arguments, defaults, param groups and
state-dict layout (checkpoints load both ways); its step is one fused pass over the params'
own memory per dtype and device: Numba on the CPU, a CUDA kernel on torch's current stream.
GradScaler, lr schedulers, DDP and FSDP2 (DTensor params: each rank steps its local shards)
work as with torch.optim. Importing this module imports torch and sets up the CPU thread
pool to share the cores with torch's (fusedopt/torch/_threads.py).
"""

from __future__ import annotations

from .. import _torch_kind
from . import _threads
from .optimizer import Optimizer
from .optimizers import CLASSES

_torch_kind.register()
THREADS = _threads.configure()

Adam = CLASSES["adam"]
AdamW = CLASSES["adamw"]
SGD = CLASSES["sgd"]
RMSprop = CLASSES["rmsprop"]
Adagrad = CLASSES["adagrad"]
Adadelta = CLASSES["adadelta"]
Adamax = CLASSES["adamax"]
NAdam = CLASSES["nadam"]
Lion = CLASSES["lion"]

__all__ = ["Optimizer", "THREADS", *(cls.__name__ for cls in CLASSES.values())]
