"""The memory fusedopt steps for a torch tensor: a DTensor's local shard, else the tensor.

FSDP2 (``torch.distributed.fsdp.fully_shard``) makes every param a DTensor sharded over the
ranks, and hands grads as DTensors of the same sharding: each rank steps its own shards, all
in one engine call. State made for a shard is handed out as a DTensor of the param's
sharding, as torch.optim's state is, so distributed checkpoints see the layout they expect
(but for quantized slots: each rank's blocks are its own, fusedopt/torch/_quantized.py;
fusedopt/torch/_reshard.py gives them as DTensors for distributed checkpoints).
"""

from __future__ import annotations

import torch

_DTENSOR = None


def _dtensor_type():
    global _DTENSOR
    if _DTENSOR is None:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # a torch built without distributed
            DTensor = ()
        _DTENSOR = DTensor
    return _DTENSOR


def is_distributed(t) -> bool:
    return type(t) is not torch.Tensor and isinstance(t, _dtensor_type() or ())


def local(t):
    """``t``'s own memory on this rank: its local shard for a DTensor, else ``t`` itself."""
    if type(t) is torch.Tensor:  # the usual grad: no isinstance walk
        return t
    if is_distributed(t):
        return t._local_tensor
    return t


def whole_size(param, memory) -> int:
    """The elements ``param`` counts as where the engine steps ``memory`` of it (its local
    shard, or the param, through its layout): for a DTensor the whole param's, so that
    every shard makes the choice the unsharded param would (``min_quantized_size``); a
    complex param's as real pairs, as the engine steps it."""
    if not is_distributed(param):
        return memory.numel()
    return param.numel() * (2 if param.is_complex() else 1)


def like_param(param, local_state):
    """``local_state`` (made beside ``param``'s local memory) as ``param`` holds its data:
    a DTensor of the same mesh and placements for a DTensor param, else itself."""
    if not is_distributed(param):
        return local_state
    return _dtensor_type().from_local(local_state, param.device_mesh, param.placements,
                                      run_check=False, shape=param.shape,
                                      stride=param.stride())
