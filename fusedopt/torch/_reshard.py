"""Quantized state (``state_dtype="q8"``/``"q4"``) through torch.distributed.checkpoint, at
any sharding.

``state_dict()`` gives a quantized param's blocks as they are kept, per shard
(fusedopt/torch/_quantized.py), for ``torch.save`` per rank. Inside ``reshardable(opt)`` it
gives them in their global form (fusedopt/memory/quant_global.py), which DCP saves once
and reshards on load: each quantized slot's entry is a dict

- ``"values"``: the decoded values, float32, placed like the param (a DTensor of its mesh
  and placements under FSDP2, else a tensor),
- ``"absmax_by_row"``: each block's absmax filed under the row where the block starts,
  float32 ``(rows, ceil(row / 128))``, placed like the param,
- ``"format"``: ``[bits, block, signed, map]`` (int64; map: the index of the format's map
  in fusedopt/memory/quant.py's ``MAP_NAMES``), the same on every rank,

and every other tensor is a copy, so that ``dcp.load`` into it changes nothing of the
optimizer until ``load_state_dict`` takes it (a nested dict, so that
``get_optimizer_state_dict``'s ``flatten_optimizer_state_dict=True`` keeps it too)::

    with fusedopt.torch.reshardable(opt):
        osd = get_optimizer_state_dict(model, opt)
    dcp.save({"optim": osd}, checkpoint_id=path)
    ...                                   # any world size, or no FSDP
    with fusedopt.torch.reshardable(opt):
        osd = get_optimizer_state_dict(model, opt)  # what dcp.load fills
    dcp.load({"optim": osd}, checkpoint_id=path)
    set_optimizer_state_dict(model, opt, osd)     # or opt.load_state_dict(osd)

``load_state_dict`` takes this form into this rank's own blocks: at the sharding it was
saved from, codes and absmax as they were (bit for bit); at another, each block whose saved
scale does not reproduce its values is quantized afresh, within the bound that
fusedopt/memory/quant_global.py derives: ``(D + 2**-22) * a`` of the saved value, ``a`` the
largest |value| of the new block, D the map's ``MAP_REACH`` there (q8: 1 - (127/128)**2,
0.0078 for a non-negative slot; q8-dynamic 0.9/128 and 0.9/256; q4 0.9/8 and 1/16). A
saved format that is not the group's, a value of another
shape, or a param sharded other than by its first dimension is refused, naming it, and
nothing changes.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..memory import quant as _quant
from ..memory import quant_global as _global
from . import _checkpoint, _quantized
from ._local import _dtensor_type, is_distributed, local

#: The keys of a quantized slot's global form.
VALUES, SCALES, FORMAT = "values", "absmax_by_row", "format"


@contextmanager
def reshardable(optimizer):
    """Inside this block ``optimizer.state_dict()`` gives quantized state in its global
    form, for torch.distributed.checkpoint (see the top); ``load_state_dict`` takes either
    form at any time."""
    before = optimizer.__dict__.get("_reshardable", False)
    optimizer._reshardable = True
    try:
        yield optimizer
    finally:
        optimizer._reshardable = before


def state_dict(optimizer, saved: dict) -> dict:
    """``saved`` (torch's state_dict) with quantized slots per shard, or in the global form
    inside :func:`reshardable`."""
    if not optimizer.__dict__.get("_reshardable", False) or optimizer._engine is None:
        return _quantized.to_state_dict(optimizer, saved)
    engine, keys = optimizer._engine, dict(optimizer._row.state)
    params = [(index, j, p) for index, g in enumerate(optimizer.param_groups)
              for j, p in enumerate(g["params"])]
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    for (index, j, param), saved_id in zip(params, ids):
        entry = saved["state"].get(saved_id)
        if entry is None:
            continue
        entry = {key: v.detach().clone() if isinstance(v, torch.Tensor) else v
                 for key, v in entry.items()}
        held = optimizer._held.get(id(param))
        coded = _checkpoint.coded_slots(engine, held.position) if held else set()
        if coded:
            where = f"param group {index}, param {j} (shape {tuple(param.shape)})"
            _check_placed(where, param, held)
            group = engine.hypers[engine.group_of[held.position]]
            signs = dict(zip(group.slots, engine.spec.signed_slots(group.flags)))
            fmt = engine.storages[held.position].state
            for slot in coded:
                entry[keys[slot]] = _global_slot(param, entry[keys[slot]], held.memory.numel(),
                                                 fmt, signs[slot])
        saved["state"][saved_id] = entry
    return saved


def _global_slot(param, buffer, n: int, fmt: str, signed: bool) -> dict:
    f = _quant.FORMATS[fmt]
    buffer = buffer.detach().cpu().numpy()
    values = _quant.dequantize(buffer, n, fmt, signed)
    _, absmax = _quant.codes_and_scales(buffer, n, fmt)
    rows, row = _global.row_shape(param.shape)
    shard = local(param)
    table = _global.scales_by_row(absmax, shard.shape[0] if shard.dim() else 1, row, fmt)
    return {VALUES: _placed(param, torch.from_numpy(values).reshape(shard.shape), param.shape),
            SCALES: _placed(param, torch.from_numpy(table), (rows, table.shape[1])),
            FORMAT: torch.tensor([f.bits, f.block, int(signed), _quant.MAP_NAMES.index(f.map)],
                                 dtype=torch.int64)}


def _placed(param, shard, shape):
    """``shard`` (this rank's part) placed as ``param`` is: a DTensor of global ``shape``."""
    shard = shard.to(local(param).device)
    if not is_distributed(param):
        return shard
    stride = torch.empty(tuple(shape), device="meta").stride()
    return _dtensor_type().from_local(shard, param.device_mesh, param.placements,
                                  run_check=False, shape=torch.Size(shape), stride=stride)


def _check_placed(where: str, param, held) -> None:
    if held.layout is not None:
        raise ValueError(f"{where}: its quantized state has no global form in a "
                         "non-default memory order; make the param contiguous")
    if not is_distributed(param):
        return
    from torch.distributed.tensor import Shard
    for placement in param.placements:
        if not (placement.is_replicate() or (type(placement) is Shard and placement.dim == 0)):
            raise ValueError(f"{where}: its placements {param.placements} shard it other "
                             "than by its first dimension (FSDP2's default); the global form "
                             "of quantized state files scales by first-dimension rows: "
                             "shard the param by dim 0, or save per rank (state_dict() "
                             "outside reshardable, torch.save)")


def from_global(optimizer, state_dict: dict) -> dict:
    """A copy of ``state_dict`` with every quantized slot of the global form as this rank's
    own blocks (:func:`_quantized.to_state_dict`'s layout); unchanged without one."""
    states = state_dict.get("state", {})
    if not any(isinstance(e, dict) and any(_is_global(v) for v in e.values())
               for e in states.values()):
        return state_dict
    converted = dict(states)
    for index, (theirs, ours) in enumerate(zip(state_dict["param_groups"],
                                               optimizer.param_groups)):
        fmt = theirs.get("state_dtype", ours.get("state_dtype"))
        for j, (saved_id, param) in enumerate(zip(theirs["params"], ours["params"])):
            entry = states.get(saved_id)
            if isinstance(entry, dict) and any(_is_global(v) for v in entry.values()):
                where = f"param group {index}, param {j} (shape {tuple(param.shape)})"
                converted[saved_id] = _local_entry(where, entry, param, fmt)
    return {**state_dict, "state": converted}


def _is_global(value) -> bool:
    return isinstance(value, dict) and SCALES in value


def _local_entry(where: str, entry: dict, param, fmt: str) -> dict:
    entry = dict(entry)
    shard = local(param)
    rows, row = _global.row_shape(param.shape)
    here = (shard.shape[0] if shard.dim() else 1, _global.width(row))
    for key in [k for k, v in entry.items() if _is_global(v)]:
        form = entry.pop(key)
        saved_fmt, signed = _format_of(where, key, form.get(FORMAT))
        if saved_fmt != fmt:
            raise ValueError(f"{where}: the saved {key!r} is {saved_fmt} state, but its "
                             f"param group, as loaded, keeps state_dtype={fmt!r}: give the "
                             f"group state_dtype={saved_fmt!r}")
        values, table = form.get(VALUES), form.get(SCALES)
        if not isinstance(values, torch.Tensor) or not isinstance(table, torch.Tensor):
            raise ValueError(f"{where}: the saved {key!r} lacks its {VALUES!r} or {SCALES!r} "
                             "tensor")
        if tuple(values.shape) != tuple(param.shape) or values.dtype != torch.float32:
            raise ValueError(f"{where}: the saved {key!r} values are {values.dtype} of shape "
                             f"{tuple(values.shape)}, this param's state is float32 of "
                             f"{tuple(param.shape)}: was the checkpoint made for another "
                             "model?")
        values, table = local(values), local(table)
        if tuple(values.shape) != tuple(shard.shape) or tuple(table.shape) != here:
            raise ValueError(f"{where}: the saved {key!r} holds {tuple(values.shape)} values "
                             f"and {tuple(table.shape)} scales on this rank, its shard needs "
                             f"{tuple(shard.shape)} and {here}: load it into tensors placed "
                             "like the param (a state_dict made inside reshardable)")
        buffer, _ = _global.to_blocks(values.detach().cpu().numpy(),
                                      table.detach().cpu().numpy(), row, fmt, signed)
        records = _quant.to_records(buffer, shard.numel(), fmt)
        codes = torch.from_numpy(records["codes"])
        entry[key] = codes.reshape(shard.shape) if _quant.FORMATS[fmt].bits == 8 else codes
        entry[f"{key}_absmax"] = torch.from_numpy(records["absmax"])
        entry[f"{key}_qmap"] = torch.from_numpy(_quant.qmap(fmt, signed))
    record = _quantized.shard_record(param)
    if record is not None:
        entry[_quantized.SHARD_KEY] = record
    return entry


def _format_of(where: str, key: str, value) -> tuple[str, bool]:
    """(format, signed) of a saved ``[bits, block, signed, map]`` (map: its index in
    ``MAP_NAMES``; without it, the dynamic map), or a ValueError naming it."""
    found = [int(k) for k in value.reshape(-1)] if isinstance(value, torch.Tensor) else []
    map_id = found[3] if len(found) == 4 else 0
    for name, f in _quant.FORMATS.items():
        if len(found) in (3, 4) and found[:2] == [f.bits, f.block] and found[2] in (0, 1) \
                and map_id == _quant.MAP_NAMES.index(f.map):
            return name, bool(found[2])
    known = {name: [f.bits, f.block, _quant.MAP_NAMES.index(f.map)]
             for name, f in _quant.FORMATS.items()}
    raise ValueError(f"{where}: the saved {key!r} format is {found or value!r}, not [bits, "
                     f"block, signed, map] of a known format {known}")

