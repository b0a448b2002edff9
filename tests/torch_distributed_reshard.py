"""Part of the worker of tests/test_torch_distributed_quantized.py: q8 state through
torch.distributed.checkpoint (``fusedopt.torch.reshardable``), on the same 2 gloo ranks.

A run on the 2-rank mesh saves its optimizer with DCP; the checkpoint is loaded:

- at the same sharding (a fresh model holding the same shards, a fresh optimizer), which
  records whether every rank's codes and absmax equal the saved ones and whether the next
  steps equal the saved run's;
- unsharded (a plain model on every rank: world size 1), which records the saved and the
  loaded decoded state (whole params) and the losses of two more steps;
- and that unsharded run saved (with ``flatten_optimizer_state_dict``) and loaded back at
  the 2-rank mesh, recording the same.
"""

from __future__ import annotations

import torch
import torch.distributed.checkpoint as dcp
import torch_distributed_quantized as worker
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

import fusedopt.torch as ft

SLOTS = ("exp_avg", "exp_avg_sq")
TRAINED, AFTER = 3, 2  # steps before the save, after each load


def _save(model, opt, path: str, flat: bool = False) -> dict:
    """DCP-save ``opt``; its quantized slots' saved values, whole (a dict by param name)."""
    options = StateDictOptions(flatten_optimizer_state_dict=flat)
    with ft.reshardable(opt):
        osd = get_optimizer_state_dict(model, opt, options=options)
    dcp.save({"optim": osd}, checkpoint_id=path)
    return _values(model, opt)


def _load(model, opt, path: str, flat: bool = False) -> None:
    options = StateDictOptions(flatten_optimizer_state_dict=flat)
    with ft.reshardable(opt):
        osd = get_optimizer_state_dict(model, opt, options=options)  # dcp.load fills it
    dcp.load({"optim": osd}, checkpoint_id=path)
    set_optimizer_state_dict(model, opt, osd, options=options)


def _values(model, opt) -> dict:
    """Every quantized slot's decoded values, whole, by param name and slot."""
    with ft.reshardable(opt):
        state = opt.state_dict()["state"]
    out = {}
    for k, (name, p) in enumerate(model.named_parameters()):
        for slot in SLOTS:
            form = state[k].get(slot)
            if isinstance(form, dict):
                values = form["values"]
                out[name, slot] = (values.full_tensor() if hasattr(values, "full_tensor")
                                   else values).clone()
    return out


def _with_params(model, like) -> None:
    with torch.no_grad():
        for p, q in zip(model.parameters(), like.parameters()):
            local = p.to_local() if hasattr(p, "to_local") else p
            local.copy_(q.to_local() if hasattr(q, "to_local") else q)


def _full(model) -> list:
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone()
            for p in model.parameters()]


def _starts(model) -> list:
    """The flat element offsets at which each rank's shard of the first weight starts."""
    p = next(model.parameters())
    if not hasattr(p, "to_local"):
        return [0]
    rows = -(-p.shape[0] // p.device_mesh.size())  # torch.chunk's rows per shard
    row = p[0].numel()
    return [r * row for r in range(0, p.shape[0], rows)]


def _steps(model, opt, x, y, n: int) -> list:
    return [worker._step(model, opt, x, y) for _ in range(n)]


def checks(mesh, out: str, x, y) -> dict:
    """The records listed at the top (``x``, ``y`` this rank's half of the batch)."""
    from torch.distributed.tensor import distribute_tensor
    sharded_dir, plain_dir = f"{out}.dcp_sharded", f"{out}.dcp_plain"
    model = worker._sharded(mesh)
    opt = ft.AdamW(model.parameters(), **worker.HYPER)
    _steps(model, opt, x, y, TRAINED)
    result = {"saved": _save(model, opt, sharded_dir)}
    kept, at_save = opt.state_dict()["state"], _full(model)  # per rank: codes, absmax

    same = worker._sharded(mesh)
    _with_params(same, model)
    opt_same = ft.AdamW(same.parameters(), **worker.HYPER)
    _load(same, opt_same, sharded_dir)
    loaded = opt_same.state_dict()["state"]
    result["same_codes_absmax"] = all(
        torch.equal(kept[k][key], loaded[k][key]) for k in kept for key in kept[k]
        if key.startswith(SLOTS) and not key.endswith("_qmap"))
    _steps(model, opt, x, y, AFTER)
    _steps(same, opt_same, x, y, AFTER)
    result["same_continues_equal"] = all(
        torch.equal(a, b) for a, b in zip(_full(model), _full(same)))

    # world size 1: every rank a plain model on the whole batch (the same on every rank)
    x_all, y_all = worker._data(0, 1)
    plain = worker._model()
    with torch.no_grad():
        for p, q in zip(plain.parameters(), at_save):
            p.copy_(q)
    plain_opt = ft.AdamW(plain.parameters(), **worker.HYPER)
    _load(plain, plain_opt, sharded_dir)
    result["unsharded"] = {"loaded": _values(plain, plain_opt), "starts": _starts(plain),
                           "losses": _steps(plain, plain_opt, x_all, y_all, AFTER)}
    plain_saved = _save(plain, plain_opt, plain_dir, flat=True)

    again = worker._sharded(mesh)
    with torch.no_grad():
        for p, q in zip(again.parameters(), plain.parameters()):
            p.to_local().copy_(distribute_tensor(q.detach(), mesh, p.placements).to_local())
    opt_again = ft.AdamW(again.parameters(), **worker.HYPER)
    _load(again, opt_again, plain_dir, flat=True)
    result["resharded"] = {"saved": plain_saved, "loaded": _values(again, opt_again),
                           "starts": _starts(again),
                           "losses": _steps(again, opt_again, x, y, AFTER)}
    return result
