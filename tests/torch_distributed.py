"""The worker of tests/test_torch_distributed.py: one rank of a 2-process gloo group on the
loopback, training the shared MLP (tests/torch_loops.py) with fusedopt.torch under DDP or
FSDP2, each rank on its half of the batch. Rank 0 saves the full params and a summary.

:func:`spawn` starts the ranks of any such worker, bounded in time."""

from __future__ import annotations

import faulthandler
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

STEPS = 10
WORLD = 2
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, out: str, *args) -> list:
    """``worker(rank, world, port, *args, out)`` on :data:`WORLD` processes; each saves
    its result to ``f"{out}.{rank}"``. Returns the results by rank; kills any process left
    after :data:`TIMEOUT_S` seconds."""
    context = mp.start_processes(worker, args=(WORLD, _free_port(), *args, out),
                                 nprocs=WORLD, join=False, start_method="spawn")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.__name__} workers still running after "
                                   f"{TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(WORLD)]


def run(rank: int, world: int, port: int, mode: str, name: str, out: str) -> None:
    faulthandler.enable()  # a rank that aborts shows where, in the test's captured stderr
    import torch_loops as loops

    import fusedopt.torch as ft

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = loops.mlp(dtype=torch.float64)
        x, y = loops.data(dtype=torch.float64)
        x, y = x[rank::world], y[rank::world]
        if mode == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            mesh = init_device_mesh("cpu", (world,))
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
        opt = ft.CLASSES[name](model.parameters(), lr=1e-2)
        loops.train(model, opt, STEPS, x, y)
        params = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
                  for p in model.parameters()]
        state = opt.state_dict()["state"]
        summary = {
            "param_types": sorted({type(p).__name__ for p in model.parameters()}),
            "state_types": sorted({type(v).__name__ for s in state.values()
                                   for k, v in s.items() if k != "step"}),
            "local_elements": sum(p.to_local().numel() if hasattr(p, "to_local")
                                  else p.numel() for p in model.parameters()),
            "steps": sorted({float(s["step"]) for s in state.values() if "step" in s}),
            "rebuilds": opt._rebuilds,
        }
        torch.save({"params": params, "summary": summary}, f"{out}.{rank}")
        dist.barrier()  # neither rank tears down the group while the other still uses it
    finally:
        dist.destroy_process_group()
