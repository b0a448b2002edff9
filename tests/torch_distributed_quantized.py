"""The worker of tests/test_torch_distributed_quantized.py: one rank of a 2-process gloo
group training a small MLP under FSDP2 with fusedopt.torch.AdamW(state_dtype="q8"). Its
first weight has more than ``min_quantized_size`` elements, each of its two (uneven)
shards fewer. The rank records:

- the storage the optimizer gave each param, with its local and global sizes;
- at every step, whether the rank's shards and state equal those of the engine stepping
  plain copies of the same shards with the same grads (fusedopt/engine/engine.py, told the
  params' global sizes as the torch door tells it), and the loss;
- whether a run resumed from a state dict saved halfway (through torch.save) continues bit
  for bit;
- the errors of loading state dicts of other shardings: the other rank's, an unsharded
  run's (and this one's into an unsharded optimizer), and this one into a 1-rank mesh;
  and whether the refused optimizer then steps as if nothing had been loaded;
- with q4, a 1 x 4100 weight (rank 1's shard is empty): its storage and local size, and
  whether a run resumed from its state dict continues bit for bit;
- torch.distributed.checkpoint's saves and loads at this and other shardings
  (tests/torch_distributed_reshard.py).
"""

from __future__ import annotations

import faulthandler
import io
import os

import torch
import torch.distributed as dist

STEPS, SAVED_AT = 8, 4
FEATURES, WIDE, CLASSES, SAMPLES = 40, 131, 5, 64  # weight 131 x 40: shards 66 and 65 rows
LONG = 4100  # a 1 x LONG weight: one rank's shard holds it all, the other's nothing
HYPER = dict(lr=1e-2, weight_decay=0.01, state_dtype="q8")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, WIDE), torch.nn.Tanh(),
                               torch.nn.Linear(WIDE, CLASSES))


def _data(rank: int, world: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    y = (x @ torch.randn(FEATURES, CLASSES, generator=g)).argmax(1)
    return x[rank::world], y[rank::world]


def _sharded(mesh):
    from torch.distributed.fsdp import fully_shard
    model = _model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _step(model, opt, x, y) -> float:
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _shards(model) -> list:
    return [p.to_local().detach().clone() for p in model.parameters()]


def _engine_beside(model, opt):
    """The engine on plain copies of ``model``'s local shards, with ``opt``'s group."""
    from fusedopt.algorithms.registry import lookup
    from fusedopt.engine.engine import Engine
    from fusedopt.torch._names import ROWS, storage_policy
    row, group = ROWS["adamw"], opt.param_groups[0]
    engine = Engine(lookup("adamw"), "torch", per_param_steps=True)
    engine.add_group({k: group[k] for k in row.hyper_names}, names=row.hyper_names,
                     **storage_policy(group))
    copies = _shards(model)
    positions = engine.add_params(copies, sizes=[p.numel() for p in model.parameters()])
    return engine, copies, positions


def _equal_to_engine(model, opt, engine, copies, positions) -> bool:
    from fusedopt.torch._local import local
    same = all(torch.equal(p.to_local(), c) for p, c in zip(model.parameters(), copies))
    for p, pos in zip(model.parameters(), positions):
        ours = [local(opt.state[p][k]) for k in ("exp_avg", "exp_avg_sq")]
        same = same and all(torch.equal(a, b) for a, b in zip(ours, engine.states[pos]))
    return same


def _resumes(mesh, make, fmt: str, x, y) -> dict:
    """A run of ``make()`` sharded on ``mesh``: its storages, local sizes, and whether a
    run resumed after one step from its state dict (through torch.save) takes the next
    two steps as the run itself."""
    import fusedopt.torch as ft

    def sharded():
        from torch.distributed.fsdp import fully_shard
        return fully_shard(make(), mesh=mesh)

    model = sharded()
    opt = ft.AdamW(model.parameters(), lr=1e-2, state_dtype=fmt)
    _step(model, opt, x, y)
    buffer, shards = io.BytesIO(), _shards(model)
    torch.save(opt.state_dict(), buffer)
    resumed = sharded()
    with torch.no_grad():
        for p, shard in zip(resumed.parameters(), shards):
            p.to_local().copy_(shard)
    again = ft.AdamW(resumed.parameters(), lr=1e-2, state_dtype=fmt)
    again.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    for _ in range(2):
        _step(model, opt, x, y)
        _step(resumed, again, x, y)
    return {"storages": [s.state for s in opt._engine.storages],
            "local_sizes": [p.to_local().numel() for p in model.parameters()],
            "resumed_equal": all(torch.equal(a.to_local(), b.to_local()) for a, b in
                                 zip(model.parameters(), resumed.parameters()))}


def _refusal(opt, state_dict):
    try:
        opt.load_state_dict(state_dict)
    except ValueError as error:
        return str(error)
    return None


def run(rank: int, world: int, port: int, out: str) -> None:
    faulthandler.enable()
    import fusedopt.torch as ft
    from fusedopt.torch._local import local

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh("cpu", (world,))
        x, y = _data(rank, world)
        model = _sharded(mesh)
        opt = ft.AdamW(model.parameters(), **HYPER)
        engine, copies, positions = _engine_beside(model, opt)
        losses, equal, saved = [], [], None
        for t in range(STEPS):
            if t == SAVED_AT:
                buffer = io.BytesIO()
                torch.save(opt.state_dict(), buffer)
                saved = (buffer.getvalue(), _shards(model))
            losses.append(_step(model, opt, x, y))
            grads = [p.grad.to_local() for p in model.parameters()]
            engine.step(grads, positions)
            equal.append(_equal_to_engine(model, opt, engine, copies, positions))
        result = {
            "storages": [s.state for s in opt._engine.storages],
            "local_sizes": [p.to_local().numel() for p in model.parameters()],
            "global_sizes": [p.numel() for p in model.parameters()],
            "engine_storages": [s.state for s in engine.storages],
            "equal_to_engine": equal, "losses": losses,
        }

        # resumed halfway, from a fresh model and optimizer
        resumed = _sharded(mesh)
        with torch.no_grad():
            for p, shard in zip(resumed.parameters(), saved[1]):
                p.to_local().copy_(shard)
        opt2 = ft.AdamW(resumed.parameters(), **HYPER)
        mine = torch.load(io.BytesIO(saved[0]), weights_only=False)
        opt2.load_state_dict(mine)
        for _ in range(SAVED_AT, STEPS):
            _step(resumed, opt2, x, y)
        result["resumed_equal"] = all(torch.equal(a.to_local(), b.to_local()) for a, b in
                                      zip(model.parameters(), resumed.parameters()))
        result["record"] = mine["state"][0].get("quantized_shard")

        # other shardings, refused; opt2 then steps as opt does
        everyone = [None] * world
        dist.all_gather_object(everyone, saved[0])
        theirs = torch.load(io.BytesIO(everyone[1 - rank]), weights_only=False)
        plain = _model()
        plain_opt = ft.AdamW(plain.parameters(), **HYPER)
        _step(plain, plain_opt, x, y)
        before = {k: local(v).clone() for k, v in opt2.state[next(resumed.parameters())]
                  .items()}
        refusals = {"other rank": _refusal(opt2, theirs),
                    "unsharded into sharded": _refusal(opt2, plain_opt.state_dict()),
                    "sharded into unsharded": _refusal(plain_opt, mine)}
        one = init_device_mesh("cpu", (1, world), mesh_dim_names=("one", "all"))["one"]
        alone = _sharded(one)
        refusals["world size 1"] = _refusal(ft.AdamW(alone.parameters(), **HYPER), mine)
        after = opt2.state[next(resumed.parameters())]
        result["refusals"] = refusals
        result["unchanged"] = before.keys() == after.keys() and all(
            torch.equal(v, local(after[k])) for k, v in before.items())
        _step(model, opt, x, y)
        _step(resumed, opt2, x, y)
        result["continues_equal"] = all(torch.equal(a.to_local(), b.to_local()) for a, b in
                                        zip(model.parameters(), resumed.parameters()))

        def long():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(LONG, 1, bias=False),
                                       torch.nn.Linear(1, CLASSES))

        g = torch.Generator().manual_seed(2)
        result["q4_empty_shard"] = _resumes(mesh, long, "q4",
                                            torch.randn(8, LONG, generator=g), y[:8])
        import torch_distributed_reshard  # DCP, at this sharding and others
        result["dcp"] = torch_distributed_reshard.checks(mesh, out, x, y)
        torch.save(result, f"{out}.{rank}")
        dist.barrier()  # neither rank tears down the group while the other still uses it
    finally:
        dist.destroy_process_group()
