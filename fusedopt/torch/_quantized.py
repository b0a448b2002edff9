"""Quantized state (``state_dtype="q8"``/``"q4"``, ...) in torch's state dicts.

The engine keeps a quantized slot as one uint8 buffer of blocks (fusedopt/memory/quant.py);
``optimizer.state[param]`` holds it under the slot's torch key. ``state_dict()`` gives it
as bitsandbytes does, in three entries per slot: ``<key>`` the codes (uint8: q8 shaped as
the param, q4 two to a byte, flat), ``<key>_absmax`` one float32 per block and
``<key>_qmap`` the map's values (float32; a string entry would not survive torch's
``load_state_dict``, which casts every state value, so the values name the map: they must
be fusedopt's map of the group's format and the slot's sign, within a few float32 ulps).

Loading takes that form back, and a bitsandbytes 8-bit state dict (``state1``/``state2``,
``absmax1``/``absmax2``, ``qmap1``/``qmap2``, wrapped in ``__bnb_optimizer_quant_state__``)
into a group kept in q8, q8-dynamic or q8-bitsandbytes: its codes index the dynamic map, and
the group continues in q8-dynamic (from q8; the state dict's groups say so) or in its own
format, its codes unchanged. A map that is not
fusedopt's, codes or scales of another size, or a group kept otherwise is refused, naming
the fix, and nothing changes.

Under FSDP2 (``fully_shard``: DTensor params, each rank stepping its local shard) the
choice of quantized or float32 state is the whole param's: a param of at least
``min_quantized_size`` elements is quantized on every rank, however small its shards, so
that the ranks agree and sharding does not change what is kept. Each rank quantizes its own
shard: the blocks start at the shard's first element, so a block never straddles two shards
(nor two params), and a sharded run's blocks are not those of an unsharded one.

Its entries are then plain local tensors, not DTensors: the codes and absmax of this rank's
blocks (q8 codes shaped as the local shard), which no DTensor placement describes (the
blocks follow each shard, whose sizes differ, and a block's scale belongs to its shard
alone), and one more entry, ``quantized_shard``, records which shard they are:
``{"global_shape", "mesh_shape", "coordinate", "local_shape", "global_offset"}`` (tuples
of ints, which torch's ``load_state_dict`` keeps as they are). Float32 state (params below
the threshold) and masters stay DTensors of the param's sharding, as before.

Save such a state dict per rank (``torch.save(optimizer.state_dict(), f"optim.{rank}")``)
and load each rank's own into the same sharding: same world size and mesh, same
``fully_shard`` layout, same param shapes. A state dict saved from another sharding
(another world size, another shard, an unsharded run, or the other way round) is refused
naming what differs and the fix, and nothing changes: blocks cannot be moved between shards
without decoding them. torch.distributed.checkpoint would take the ranks' same-named plain
tensors for replicated copies and keep one: for it, and to load at another sharding, take
the state dict inside ``fusedopt.torch.reshardable(opt)`` (fusedopt/torch/_reshard.py),
which gives quantized state in a form shaped by the whole param.
"""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint_quantized import coded
from ..memory import quant as _quant
from . import _layout
from ._local import is_distributed, local

#: bitsandbytes' key for its wrapped quantization state, and its per-slot names.
BNB_WRAPPED = "__bnb_optimizer_quant_state__"
BNB_SLOTS = (("state1", "absmax1", "qmap1"), ("state2", "absmax2", "qmap2"))
#: The format of bitsandbytes' 8-bit state (the dynamic map), and the groups' state_dtype
#: that take it: q8 (another map by default) switches to it, as the state dict's groups
#: say, so that its codes continue unchanged.
BNB_FORMAT = "q8-dynamic"
BNB_INTO = ("q8", BNB_FORMAT, "q8-bitsandbytes")
#: Group keys of bitsandbytes' optimizers that torch's classes do not have.
BNB_GROUP_KEYS = ("alpha", "t_alpha", "t_beta3", "optim_bits", "min_8bit_size",
                  "percentile_clipping", "block_wise", "max_unorm", "skip_zeros", "is_paged")
#: Map entries may differ from fusedopt's by this many float32 ulps (bitsandbytes builds its
#: dynamic map with float32 arithmetic; fusedopt rounds the exact values once).
MAP_ULPS = 2
#: The entry of a sharded param's saved state that says which shard its blocks are of.
SHARD_KEY = "quantized_shard"


def quantized_keys(row, slot_names, fmt) -> set:
    """The extra keys a quantized param's saved state has."""
    keys = dict(row.state)
    return {f"{keys[s]}{suffix}" for s in slot_names for suffix in ("_absmax", "_qmap")}


def to_state_dict(optimizer, saved: dict) -> dict:
    """``saved`` (torch's state_dict) with every quantized slot as codes, absmax and map."""
    engine = optimizer._engine
    if engine is None:
        return saved
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    keys = dict(optimizer._row.state)
    for param, saved_id in zip(params, ids):
        held = optimizer._held.get(id(param))
        if held is None or not engine.storages[held.position].quantized:
            continue
        st = engine.storages[held.position]
        entry = dict(saved["state"][saved_id])
        slots = engine.hypers[engine.group_of[held.position]].slots
        n = held.memory.numel()  # a shard's own elements under FSDP2
        for slot, sign in zip(slots, coded(engine, held.position)):
            if sign is None:  # a float32 slot (float_state): as float state gives it
                continue
            key = keys[slot]
            records = _quant.to_records(entry[key].detach().cpu().numpy(), n, st.state)
            codes = torch.from_numpy(records["codes"])
            entry[key] = in_param_order(codes, local(param)) \
                if _quant.FORMATS[st.state].bits == 8 else codes
            entry[f"{key}_absmax"] = torch.from_numpy(records["absmax"])
            entry[f"{key}_qmap"] = torch.from_numpy(_quant.qmap(st.state, sign))
        if held.sharded:
            entry[SHARD_KEY] = shard_record(param)
        saved["state"][saved_id] = entry
    return saved


def from_bitsandbytes(optimizer, state_dict: dict) -> dict:
    """A copy of ``state_dict`` with bitsandbytes' 8-bit entries as :func:`to_state_dict`
    writes them (unchanged when it has none)."""
    states = state_dict.get("state", {})
    if not any(isinstance(e, dict) and (BNB_WRAPPED in e or "state1" in e)
               for e in states.values()):
        return state_dict
    for k, group in enumerate(optimizer.param_groups):
        if group.get("state_dtype") not in BNB_INTO:
            raise ValueError(f"param group {k}: a bitsandbytes 8-bit state dict loads into "
                             f"state_dtype='q8', 'q8-dynamic' (q8 continues in q8-dynamic, "
                             f"its map) or 'q8-bitsandbytes', this group keeps "
                             f"state_dtype={group.get('state_dtype')!r}; make the optimizer "
                             "with state_dtype='q8-bitsandbytes' to continue as bitsandbytes "
                             "rounds, or 'q8'")
    keys = [key for _, key in optimizer._row.state]
    converted = {}
    for pid, entry in states.items():
        entry = dict(entry)
        entry.update(entry.pop(BNB_WRAPPED, {}))
        if "absmax1" not in entry:  # a param bitsandbytes kept in 32 bits
            for (codes, _, _), key in zip(BNB_SLOTS, keys):
                if codes in entry:
                    entry[key] = entry.pop(codes)
        else:
            for (codes, absmax, qmap), key in zip(BNB_SLOTS, keys):
                if codes in entry:
                    entry[key] = entry.pop(codes)
                    entry[f"{key}_absmax"] = entry.pop(absmax)
                    entry[f"{key}_qmap"] = entry.pop(qmap)
        for name in list(entry):
            if name.startswith(("state", "absmax", "qmap")) or name in ("gnorm_vec", "unorm_vec"):
                entry.pop(name)
        if isinstance(entry.get("step"), (int, float)):
            entry["step"] = torch.tensor(float(entry["step"]))
        converted[pid] = entry
    groups = [{k: v for k, v in g.items() if k not in BNB_GROUP_KEYS}
              for g in state_dict["param_groups"]]
    for g, ours in zip(groups, optimizer.param_groups):
        for key in ("master_weights", "stochastic_rounding", "kahan_summation", "seed"):
            if key in ours:
                g.setdefault(key, ours[key])
        if ours.get("state_dtype") not in ("q8-dynamic", "q8-bitsandbytes"):
            g["state_dtype"] = BNB_FORMAT  # its codes index bitsandbytes' dynamic map
        else:
            g["state_dtype"] = ours["state_dtype"]
    return {"state": converted, "param_groups": groups}


def in_param_order(codes: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """q8 ``codes``, one per element of ``param`` in its memory order (the order its blocks
    run in), as a uint8 tensor of ``param``'s shape and strides: entry [i, j, ...] is the
    code of param element [i, j, ...], as torch's moments are laid out like their param."""
    out = torch.empty_like(param, dtype=torch.uint8, device="cpu")  # the param's strides
    _layout.span(out).copy_(codes)
    return out


def _memory_order(where: str, key: str, codes: torch.Tensor, param) -> torch.Tensor:
    """Saved q8 ``codes`` of ``param``'s shape as one run in ``param``'s memory order, once
    their strides say their blocks were made in that order."""
    if tuple(codes.shape) != tuple(param.shape):
        return codes
    if not _layout.same_order(codes, param):
        raise ValueError(f"{where}: the saved {key!r} codes have strides {codes.stride()} and "
                         f"the param {param.stride()}: quantized blocks run in the memory "
                         "order of the param they were saved from, so they load only into a "
                         "param laid out alike; give the param that layout (e.g. "
                         ".to(memory_format=torch.channels_last)) before loading, or leave "
                         "the optimizer's state out of the load to start it afresh")
    return _layout.span(torch.empty_like(param, dtype=torch.uint8, device="cpu").copy_(codes))


def _saved_with(table: np.ndarray, signed: bool) -> str:
    """How to load codes of the saved map ``table``: the state_dtype whose map it is."""
    for name in _quant.QUANTIZED:
        ours = _quant.qmap(name, signed)
        if ours.size == table.size and np.all(np.abs(
                table.view(np.int32).astype(np.int64) - ours.view(np.int32)) <= MAP_ULPS):
            return f"it is {name}'s map: give the group state_dtype={name!r}"
    return f"it is none of {list(_quant.QUANTIZED)}'s maps"


def saved_buffer(where: str, key: str, saved: dict, memory, fmt: str, signed: bool,
                 param=None):
    """The engine's buffer for slot ``key`` from a saved codes/absmax/map entry (``param``:
    the local param, whose memory order q8 codes of its shape are read in)."""
    n = memory.numel()
    codes, absmax = saved.get(key), saved.get(f"{key}_absmax")
    if codes is None or absmax is None:
        raise ValueError(f"{where}: the saved state has no {key!r} codes and "
                         f"{key + '_absmax'!r} scales, which a group kept in {fmt} needs "
                         "(a checkpoint of float state loads into a group of its dtype)")
    if param is not None and _quant.FORMATS[fmt].bits == 8:
        codes = _memory_order(where, key, codes.detach().cpu(), param)
    qmap = saved.get(f"{key}_qmap")
    if qmap is not None:
        theirs = qmap.detach().cpu().numpy().astype(np.float32).reshape(-1)
        ours = _quant.qmap(fmt, signed)
        close = theirs.size == ours.size and np.all(
            np.abs(theirs.view(np.int32).astype(np.int64) - ours.view(np.int32)) <= MAP_ULPS)
        if not close:
            raise ValueError(f"{where}: the saved {key + '_qmap'!r} is not fusedopt's "
                             f"{fmt} {'signed' if signed else 'unsigned'} "
                             f"{_quant.FORMATS[fmt].map} map (a checkpoint quantized with "
                             "another map, or saved from a slot of the other sign); it cannot "
                             f"be decoded here: {_saved_with(theirs, signed)}")
    try:
        buffer = _quant.from_records(codes.detach().cpu().numpy(),
                                     absmax.detach().cpu().numpy(), n, fmt, f"{where}: {key}")
    except ValueError as error:
        raise ValueError(str(error)) from None
    return torch.from_numpy(buffer).to(memory.device)


def shard_record(param) -> dict | None:
    """Which shard of DTensor ``param`` this rank holds (see the top), None for a tensor."""
    if not is_distributed(param):
        return None
    # torch's own rule for where a shard starts (DTensor placements, uneven shards)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    mesh = param.device_mesh
    _, offset = compute_local_shape_and_global_offset(param.shape, mesh, param.placements)
    return {"global_shape": tuple(param.shape), "mesh_shape": tuple(mesh.shape),
            "coordinate": tuple(mesh.get_coordinate()),
            "local_shape": tuple(local(param).shape),
            "global_offset": tuple(int(k) for k in offset)}


def shard_checked(where: str, saved: dict, param) -> dict:
    """``saved`` (a param's saved state, for a group kept quantized) without its shard
    record, once that record says its blocks are of ``param``'s shard on this rank; else a
    ValueError naming what differs. Float state passes (its own checks say what it lacks)."""
    if not any(k.endswith("_absmax") for k in saved):
        return saved
    ours, theirs = shard_record(param), saved.get(SHARD_KEY)
    fix = ("quantized state is kept per shard, in blocks that start at the shard's first "
           "element, and a state dict of them cannot be resharded: load each rank's own "
           "state dict into the sharding it was saved from (the same world size, mesh and "
           "fully_shard layout); to load at another, save through "
           "torch.distributed.checkpoint a state dict taken inside "
           "fusedopt.torch.reshardable(opt)")
    if theirs is None and ours is None:
        return saved
    if theirs is not None and not isinstance(theirs, dict):
        raise ValueError(f"{where}: saved {SHARD_KEY!r} is {theirs!r}, not a record of "
                         f"the shard its blocks are of; {fix}")
    if theirs is None:
        raise ValueError(f"{where}: this param is a shard ({_shard(ours)}), but its saved "
                         f"quantized state has no {SHARD_KEY!r} record: it was saved from "
                         f"an unsharded param; {fix}")
    if ours is None:
        raise ValueError(f"{where}: the saved quantized state is of a shard "
                         f"({_shard(theirs)}), but this param is not sharded; {fix}")
    differ = [f"{k} {_ints(theirs.get(k))} saved, {ours[k]} here" for k in ours
              if _ints(theirs.get(k)) != ours[k]]
    if differ:
        raise ValueError(f"{where}: the saved quantized state is of another shard "
                         f"({'; '.join(differ)}); {fix}")
    return {k: v for k, v in saved.items() if k != SHARD_KEY}


def _ints(value):
    try:
        return tuple(int(k) for k in value)
    except (TypeError, ValueError):
        return value


def _shard(record: dict) -> str:
    get = record.get
    return (f"{get('local_shape')} at {get('global_offset')} of {get('global_shape')}, "
            f"coordinate {get('coordinate')} of a {get('mesh_shape')} mesh")
