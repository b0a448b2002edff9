"""A param's saved state (torch.optim's layout) as the engine's slots, every key and dtype
checked first.

Which checkpoints load, and what they become:

- fusedopt.torch's own: every param group carries its ``state_dtype`` and
  ``master_weights``, which load like any hyperparameter, so the state keeps its dtypes
  and loads bit for bit (torch.optim's own load_state_dict would cast every floating state
  tensor to the param's dtype: fusedopt.torch loads the tensors as saved).
- torch.optim's (no storage keys in its groups): the groups take this optimizer's
  ``state_dtype`` and ``master_weights``. By default that keeps the param's dtype, as
  torch.optim does, so a torch.optim checkpoint of bf16 params loads bit for bit.
- A moment whose dtype is not the one its group keeps is converted to it, as torch.optim
  casts state: widening (float16 or bfloat16 state into float32) is exact, narrowing rounds
  once to nearest even.
- A master or remainder the checkpoint lacks is made from the param, as at a first step
  (the fp32 master is the 16-bit param widened; the remainder is zero). One it has while
  this group keeps none is refused; so is a master that is not float32, as torch.optim
  leaves one after it loaded (and then stepped without) it: it would be a stale, rounded
  master. A remainder carried through torch.optim's steps cannot be told from a good one:
  it still rebuilds a float32 value within half a bf16 ulp of the param, not the master.
"""

from __future__ import annotations

import math
from itertools import chain

import torch

from ..checkpoint_quantized import coded
from ..memory import factored as _factored
from ..memory import storage as _storage
from ..memory.torch_kind import torch_dtype
from . import _quantized
from ._local import local, whole_size
from ._names import MASTER_KEYS, Row

def originals(optimizer, state_dict: dict) -> dict:
    """The checkpoint's state tensors by (param, key), as saved: torch.optim's
    load_state_dict casts floating ones to the param's dtype (every key but ``step``)."""
    ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    found = {}
    for saved_id, param in zip(ids, params):
        for key, value in state_dict["state"].get(saved_id, {}).items():
            if isinstance(value, torch.Tensor):
                found[id(param), key] = value
    return found


def coded_slots(engine, pos: int) -> set:
    """The slots of position ``pos`` kept as quantized blocks (``checkpoint_quantized.coded``)."""
    group = engine.hypers[engine.group_of[pos]]
    return {slot for slot, sign in zip(group.slots, coded(engine, pos)) if sign is not None}


def present(spec, slot: str, param) -> bool:
    """Whether ``param`` has ``slot`` in torch's state: a factored slot only at the ranks
    that keep it (torch's Adafactor: ``row_var``/``col_var`` at rank >= 2, ``variance``
    below); the engine holds an empty array for the others."""
    kind = {s.name: s.shape for s in spec.slot_decls}.get(slot)
    return _factored.present(kind, tuple(param.shape))


def slots(row: Row, slot_names: tuple, storage, where: str, saved: dict, memory,
          spec=None, signed: tuple = (), param=None) -> list:
    """The engine's state arrays for one param (copies beside ``memory``) from ``saved``
    (its checkpoint entry, None values dropped), the master slot last when ``storage``
    keeps one. ``param``: the local param, whose memory order q8 codes are read in."""
    keys = dict(row.state)
    kinds = {s.name: s.shape for s in spec.slot_decls} if spec is not None else {}
    shape = tuple(memory.shape)
    absent = {s for s in slot_names if not _factored.present(kinds.get(s), shape)}
    wanted = {keys[s] for s in slot_names if s not in absent}
    extra = {"step"} if row.counts_steps else set()
    extra |= {d.key for d in row.derived}
    master_keys = set(MASTER_KEYS.values())
    master = storage.master  # (slot, dtype) or None
    master_key = MASTER_KEYS[master[0]] if master else None
    signs = dict(zip(slot_names, signed)) if storage.quantized else {}
    coded = [s for s in slot_names if signs.get(s) is not None]  # float_state: float32
    if coded:
        extra |= _quantized.quantized_keys(row, coded, storage.state)
        extra -= {k for k in extra if k.endswith("_qmap") and k not in saved}
    missing = (wanted | extra) - set(saved)
    unknown = set(saved) - wanted - extra - {master_key}
    if unknown & master_keys:
        key = sorted(unknown & master_keys)[0]
        raise ValueError(f"{where}: the saved state has a {key!r}, but this group keeps "
                         f"master_weights={_storage.spelling(storage.mode)!r}: pass "
                         f"master_weights={'remainder' if key == 'remainder' else True!r} "
                         f"(its param group's value), or delete the {key!r} entries to "
                         "continue from the params alone")
    if missing or unknown:
        raise ValueError(f"{where}: the saved state has {sorted(saved)}; this group "
                         f"needs {sorted(wanted | extra)} (missing {sorted(missing)}, "
                         f"unexpected {sorted(unknown)}): was the checkpoint made by "
                         f"another optimizer, or with other amsgrad/momentum/centered?")
    values = []
    for slot in slot_names:
        if slot in coded:
            values.append(_quantized.saved_buffer(where, keys[slot], saved, memory,
                                                  storage.state, signs[slot], param))
            continue
        kind = kinds.get(slot)
        if kind is not None:  # a factored slot: its own shape, or empty at this rank
            want = _factored.slot_shape(kind, shape)
            made = torch.zeros(want, dtype=torch_dtype(storage.state), device=memory.device)
            if slot not in absent:
                value = local(saved[keys[slot]])
                if tuple(value.shape) != want:
                    raise ValueError(f"{where}: saved {keys[slot]!r} has shape "
                                     f"{tuple(value.shape)}, expected {want}")
                made.copy_(value)
            values.append(made)
            continue
        dtype = storage.slot_dtype(signs.get(slot, True))
        value = _checked(where, keys[slot], local(saved[keys[slot]]), memory, dtype, False, "")
        values.append(_beside(memory, dtype).copy_(value))
    if master is not None:
        if master_key in saved:
            value = _checked(where, master_key, local(saved[master_key]), memory, master[1],
                             True, "a master that went through torch.optim is rounded to the "
                             "param's dtype and stale; delete the entries to make masters "
                             "from the params")
            values.append(_beside(memory, master[1]).copy_(value))
        elif storage.mode == "master":
            values.append(_beside(memory, "float32").copy_(memory))
        else:  # a remainder or a compensation: zero, as at a first step
            values.append(_beside(memory, master[1]).zero_())
    return values


def _checked(where: str, key: str, value, memory, dtype: str, strict: bool, fix: str):
    if tuple(value.shape) != tuple(memory.shape):
        raise ValueError(f"{where}: saved {key!r} has shape {tuple(value.shape)}, the "
                         f"param's memory {tuple(memory.shape)}")
    have = str(value.dtype).replace("torch.", "")
    if strict and have != dtype:
        raise ValueError(f"{where}: saved {key!r} is {have}, but this group keeps it in "
                         f"{dtype}: {fix}")
    if not value.is_floating_point() and have != dtype:
        raise ValueError(f"{where}: saved {key!r} is {have}, not {dtype}")
    return value


def _beside(memory, dtype: str):
    return torch.empty_like(memory, dtype=torch_dtype(dtype),
                            memory_format=torch.contiguous_format)


def saved(optimizer, index: int, j: int, param, memory, layout):
    """The saved state of ``param`` (``optimizer.state[param]``) as engine slots (copies
    beside ``memory``, the engine's view of the param; ``layout`` its translation,
    fusedopt/torch/_layout.py) and its step count; every key checked first."""
    engine = optimizer._engine
    where = f"param group {index}, param {j} (shape {tuple(param.shape)})"
    entries = {k: v for k, v in optimizer.state[param].items() if v is not None}
    storage = engine.storage_of(len(engine.params), memory, index,
                                 size=whole_size(param, memory))
    signed = engine.spec.signed_slots(engine.hypers[index].flags)
    keys = dict(optimizer._row.state)
    # codes, scales and maps of quantized slots: blocks, read by saved_buffer
    blocks = {f"{keys[s]}{suffix}" for s, sign in zip(engine.hypers[index].slots, signed)
              if storage.quantized and sign is not None for suffix in ("", "_absmax", "_qmap")}
    if layout is not None:  # moments in the param's order and the engine's view of it
        entries = {k: layout.like(local(v), f"{where}: saved {k!r}")
                   if isinstance(v, torch.Tensor) and v.dim() and k not in blocks else v
                   for k, v in entries.items()}
    if storage.quantized:  # a shard's blocks load into the same shard only
        entries = _quantized.shard_checked(where, entries, param)
    values = slots(optimizer._row, engine.hypers[index].slots, storage, where, entries,
                   memory, engine.spec, signed, local(param))
    return values, step_of(optimizer, where, index, entries)


def step_of(optimizer, where: str, index: int, entries: dict) -> int:
    """The step count of a param's saved state ``entries``, checked."""
    row = optimizer._row
    if not row.counts_steps:
        return 1 if entries else 0  # SGD, Lion: only "stepped before or not" matters
    t = float(entries["step"])
    if not (t >= 0 and t == int(t)):
        raise ValueError(f"{where}: saved step {t} is not a step count")
    t = int(t)
    for entry in row.derived:
        # fusedopt derives these from t and the group's hyperparameters; torch carries them
        # from step to step (NAdam's float32 running product stays within 1e-7 of the
        # derived one: it shrinks geometrically while its error grows by an ulp a step).
        have, want = float(entries[entry.key]), derived(optimizer, entry, index, t)
        if not math.isclose(have, want, rel_tol=entry.rel_tol, abs_tol=entry.abs_tol):
            raise ValueError(f"{where}: saved {entry.key} {have!r} is not {entry.what} "
                             f"after {t} steps with this group's hyperparameters "
                             f"({want!r}); fusedopt computes it from the step, so it "
                             "cannot continue a run whose hyperparameters changed during "
                             "training")
    return t


def derived(optimizer, entry, index: int, step: int) -> float:
    """Derived state entry ``entry`` (fusedopt/algorithms/spec.py: StateScalar) of a param of
    group ``index`` after ``step`` steps, as torch holds it."""
    return float(entry.value(optimizer._engine.hypers[index].hyper, step))
