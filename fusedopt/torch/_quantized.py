"""Quantized state (``state_dtype="q8"``/``"q4"``) in torch's state dicts.

The engine keeps a quantized slot as one uint8 buffer of blocks (fusedopt/memory/quant.py);
``optimizer.state[param]`` holds it under the slot's torch key. ``state_dict()`` gives it
as bitsandbytes does, in three entries per slot: ``<key>`` the codes (uint8: q8 shaped as
the param, q4 two to a byte, flat), ``<key>_absmax`` one float32 per block and
``<key>_qmap`` the map's values (float32; a string entry would not survive torch's
``load_state_dict``, which casts every state value, so the values name the map: they must
be fusedopt's map of the group's format and the slot's sign, within a few float32 ulps).

Loading takes that form back, and a bitsandbytes 8-bit state dict (``state1``/``state2``,
``absmax1``/``absmax2``, ``qmap1``/``qmap2``, wrapped in ``__bnb_optimizer_quant_state__``)
into a group kept in q8: its codes index the same dynamic map. A map that is not
fusedopt's, codes or scales of another size, or a group kept otherwise is refused, naming
the fix, and nothing changes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..memory import quant as _quant

#: bitsandbytes' key for its wrapped quantization state, and its per-slot names.
BNB_WRAPPED = "__bnb_optimizer_quant_state__"
BNB_SLOTS = (("state1", "absmax1", "qmap1"), ("state2", "absmax2", "qmap2"))
#: Group keys of bitsandbytes' optimizers that torch's classes do not have.
BNB_GROUP_KEYS = ("alpha", "t_alpha", "t_beta3", "optim_bits", "min_8bit_size",
                  "percentile_clipping", "block_wise", "max_unorm", "skip_zeros", "is_paged")
#: Map entries may differ from fusedopt's by this many float32 ulps (bitsandbytes builds its
#: dynamic map with float32 arithmetic; fusedopt rounds the exact values once).
MAP_ULPS = 2


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
        signed = engine.spec.signed_slots(engine.hypers[engine.group_of[held.position]].flags)
        n = param.numel()
        for slot, sign in zip(engine.hypers[engine.group_of[held.position]].slots, signed):
            key = keys[slot]
            records = _quant.to_records(entry[key].detach().cpu().numpy(), n, st.state)
            codes = torch.from_numpy(records["codes"])
            entry[key] = codes.reshape(param.shape) if st.state == "q8" else codes
            entry[f"{key}_absmax"] = torch.from_numpy(records["absmax"])
            entry[f"{key}_qmap"] = torch.from_numpy(_quant.qmap(st.state, sign))
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
        if group.get("state_dtype") != "q8":
            raise ValueError(f"param group {k}: a bitsandbytes 8-bit state dict loads into "
                             f"state_dtype='q8' (its codes are q8's), this group keeps "
                             f"state_dtype={group.get('state_dtype')!r}; make the optimizer "
                             "with state_dtype='q8'")
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
        for key in ("state_dtype", "master_weights", "stochastic_rounding",
                    "kahan_summation", "seed"):
            if key in ours:
                g.setdefault(key, ours[key])
    return {"state": converted, "param_groups": groups}


def saved_buffer(where: str, key: str, saved: dict, memory, fmt: str, signed: bool):
    """The engine's buffer for slot ``key`` from a saved codes/absmax/map entry."""
    n = memory.numel()
    codes, absmax = saved.get(key), saved.get(f"{key}_absmax")
    if codes is None or absmax is None:
        raise ValueError(f"{where}: the saved state has no {key!r} codes and "
                         f"{key + '_absmax'!r} scales, which a group kept in {fmt} needs "
                         "(a checkpoint of float state loads into a group of its dtype)")
    qmap = saved.get(f"{key}_qmap")
    if qmap is not None:
        theirs = qmap.detach().cpu().numpy().astype(np.float32).reshape(-1)
        ours = _quant.qmap(fmt, signed)
        close = theirs.size == ours.size and np.all(
            np.abs(theirs.view(np.int32).astype(np.int64) - ours.view(np.int32)) <= MAP_ULPS)
        if not close:
            raise ValueError(f"{where}: the saved {key + '_qmap'!r} is not fusedopt's "
                             f"{fmt} {'signed' if signed else 'unsigned'} dynamic map (a "
                             "checkpoint quantized with another map, or saved from a slot of "
                             "the other sign); it cannot be decoded here")
    try:
        buffer = _quant.from_records(codes.detach().cpu().numpy(),
                                     absmax.detach().cpu().numpy(), n, fmt, f"{where}: {key}")
    except ValueError as error:
        raise ValueError(str(error)) from None
    return torch.from_numpy(buffer).to(memory.device)
