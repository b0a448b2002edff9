"""The state an optimizer holds beside a param, as first made: its slots (each filled with
the slot's initial value, or as the param; quantized and factored ones in their own form),
then the master slot its storage keeps."""

from __future__ import annotations

from . import factored as _factored
from . import quant as _quant
from .arrays import kind_of


def slot_dtypes(slots: tuple, st, signed: tuple = ()) -> tuple:
    """(names, dtypes) of the state arrays a param of storage ``st`` holds (a quantized
    slot: its format's name, "q8" or "q4"; ``signed`` the slots' maps, None for a float
    one: ``Storage.slot_dtype``)."""
    signed = signed or (True,) * len(slots)
    names, dtypes = list(slots), [st.slot_dtype(sign) for sign in signed]
    if st.master:
        names.append(st.master[0])
        dtypes.append(st.master[1])
    return names, dtypes


def new_state(param, slots: tuple, st, init: float, signed: tuple = (),
               copies=frozenset(), kinds: tuple = ()) -> list:
    """State arrays beside ``param``: the slots filled with ``init`` (quantized slots: their
    blocks, fusedopt/memory/quant.py, each element ``init``, but those whose ``signed``
    entry is None, ``float_state``, kept float32; those in ``copies`` with the param's
    values; a factored slot in its own shape, fusedopt/memory/factored.py), then the master
    slot (the param widened to float32, or zero remainders: a bf16 value splits exactly)."""
    kind = kind_of(param)
    if st.quantized:  # a slot in ``copies`` is float_state (fusedopt/engine/hypers.py)
        n = kind.size(param)
        made = [kind.from_host(param, _quant.filled(n, st.state, sign, init))
                if sign is not None else kind.zeros(param, st.slot_dtype(sign), init)
                for sign in signed]
    else:
        kinds = kinds or (None,) * len(slots)
        made = [kind.zeros(param, st.state, init) if shape is None else
                kind.zeros(param, st.state, init, _factored.slot_shape(shape, kind.shape(param)))
                for shape in kinds]
    for name, array in zip(slots, made):
        if name in copies:
            array[...] = param
    if st.mode == "master":
        made.append(kind.astype(param, "float32"))
    elif st.mode == "remainder":
        made.append(kind.zeros(param, "int16"))
    elif st.mode == "kahan":
        made.append(kind.zeros(param, st.param))  # nothing lost yet
    return made
