"""fusedopt.torch: drop-in ``torch.optim`` optimizers stepped by fusedopt's fused kernels.

    import fusedopt.torch
    opt = fusedopt.torch.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

Each class is a ``torch.optim.Optimizer`` with torch's arguments, defaults, param groups and
state-dict layout (checkpoints load both ways); its step is one fused pass over the params'
own memory per dtype and device: Numba on the CPU, a CUDA kernel on torch's current stream.
GradScaler, lr schedulers, DDP and FSDP2 (DTensor params: each rank steps its local shards)
work as with torch.optim; ``reshardable(opt)`` gives quantized state as DTensors for
torch.distributed.checkpoint, loadable at any world size (fusedopt/torch/_reshard.py).
Importing this module imports torch; imported before torch, it starts Numba's threads
first so that both share one OpenMP runtime, and it sizes Numba's pool to torch's threads
(fusedopt/torch/_threads.py; ``THREADS`` says what it did).
"""

from __future__ import annotations

from . import _threads

_started = _threads.start_before_torch()  # before torch: one OpenMP runtime for both

from ..memory import torch_kind as _torch_kind  # noqa: E402  (imports torch)
from .optimizer import Optimizer  # noqa: E402
from .optimizers import CLASSES  # noqa: E402
from ._reshard import reshardable  # noqa: E402

_torch_kind.register()
#: What fusedopt.torch did to the CPU thread pools (fusedopt/torch/_threads.py).
THREADS = _threads.match_torch(_started)

# One class per registered optimizer with a torch door: fusedopt.torch.Adam, .NAdam, ...
globals().update({cls.__name__: cls for cls in CLASSES.values()})

__all__ = ["Optimizer", "THREADS", "reshardable", *(cls.__name__ for cls in CLASSES.values())]
