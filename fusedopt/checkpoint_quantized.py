"""Quantized state in checkpoints (fusedopt/checkpoint.py): a slot of ``state_dtype="q8"``
or ``"q4"`` is saved as two tensors, ``state/{position}/{slot}/codes`` (uint8, the codes in
element order; q4 two to a byte, the even element in the low half) and
``state/{position}/{slot}/absmax`` (float32, one per block), and its header entry names the
format, the map and the block size (fusedopt/memory/quant.py)."""

from __future__ import annotations

import numpy as np

from .memory import quant as _quant
from .memory.arrays import kind_of


def _slot_dtype(s) -> str:
    return kind_of(s).dtype(s)


def coded(engine, i) -> tuple:
    """For each optimizer slot of position ``i`` (its group's ``slots``, in order): whether
    its map is signed, for a slot kept as quantized blocks; None for a slot kept as floats
    (float state, and a ``float_state`` slot beside quantized ones). The one place that
    decides which of a position's slots are codes: checkpoints and the torch door read it."""
    group = engine.hypers[engine.group_of[i]]
    signed = engine.spec.signed_slots(group.flags)  # None: a float_state slot
    if not engine.storages[i].quantized:
        return (None,) * len(signed)
    return tuple(signed)


def slots_of(engine, i) -> list:
    """(name, array, quantized format or None) of position ``i``'s state arrays (None for
    the master slot and a ``float_state`` slot beside quantized ones). A quantized slot
    (fusedopt/memory/quant.py) is saved as two tensors, ``.../codes`` and ``.../absmax``,
    its header entry naming the format, the map and the block size."""
    st = engine.storages[i]
    formats = [None if sign is None else st.state for sign in coded(engine, i)]
    formats += [None] * (len(engine.states[i]) - len(formats))  # the master slot
    return [(n, s, fmt) for n, s, fmt in zip(engine.slot_names(i), engine.states[i], formats)]


def slot_entry(name, s, fmt) -> dict:
    if fmt is None:
        return {"name": name, "dtype": _slot_dtype(s)}
    return {"name": name, "dtype": fmt, "map": _quant.FORMATS[fmt].map,
            "block": _quant.FORMATS[fmt].block}



def check_quantized(arrays: dict, key: str, slot: dict, shape) -> str | None:
    """What does not fit in the saved quantized slot ``key`` (its header entry ``slot``, of
    a param of ``shape``), or None."""
    if slot.get("map") not in _quant.MAP_NAMES:
        return (f"{key} uses the map {slot.get('map')!r}; this version knows "
                f"{list(_quant.MAP_NAMES)}")
    if slot.get("map") != _quant.FORMATS[slot["dtype"]].map:
        return (f"{key} says {slot['dtype']} with the map {slot.get('map')!r}; "
                f"{slot['dtype']} keeps the {_quant.FORMATS[slot['dtype']].map!r} map")
    if slot.get("block") != _quant.FORMATS[slot["dtype"]].block:
        return (f"{key} has blocks of {slot.get('block')}, {slot['dtype']} has "
                f"{_quant.FORMATS[slot['dtype']].block}")
    try:
        _quant.from_records(arrays.get(f"{key}/codes", np.zeros(0)),
                            arrays.get(f"{key}/absmax", np.zeros(0)),
                            int(np.prod(shape)), slot["dtype"], key)
    except ValueError as error:
        return str(error)
    return None


def by_map(meta: dict) -> dict:
    """``meta`` (a checkpoint's header) with each quantized slot's dtype the format of its
    bits and its map: a checkpoint saved when "q8" named the dynamic map (its slots say
    ``"dtype": "q8", "map": "dynamic"``) holds q8-dynamic state, and is read as such."""
    for entry in meta.get("params", []):
        for slot in entry.get("slots", []):
            f = _quant.FORMATS.get(slot.get("dtype"))
            if f is None or slot.get("map", f.map) == f.map:
                continue
            for name, other in _quant.FORMATS.items():
                if (other.bits, other.block, other.map, other.rounding) == (
                        f.bits, f.block, slot["map"], "nearest"):
                    slot["dtype"] = name
    return meta
