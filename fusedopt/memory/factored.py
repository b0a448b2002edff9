"""The shapes of factored state (a declared ``Slot.shape``, fusedopt/algorithms/spec.py).

Adafactor keeps, for a param of rank >= 2 seen as slices ``(B, R, C)`` (B the product of
the leading dimensions), one value per row (``R`` per slice: the second moment averaged
over the last dimension) and one per column (``C`` per slice: averaged over the
second-to-last); a param of rank < 2 keeps its whole second moment. The arrays take
torch.optim's shapes (the reduced dimension kept as 1), so the torch door shows them as
they are; other doors view the same memory in their own shapes. A kind a param's rank does
not have is an empty array, which no pass reads.
"""

from __future__ import annotations

import math

KINDS = ("row", "col", "full")


def is_factored(shape) -> bool:
    """Whether a param of ``shape`` keeps row and column factors."""
    return len(shape) >= 2


def slices(shape) -> tuple[int, int, int]:
    """``(B, R, C)`` of a factored param of ``shape``."""
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def slot_shape(kind: str | None, shape) -> tuple:
    """The shape of a slot of ``kind`` for a param of ``shape`` (None: the param's)."""
    shape = tuple(shape)
    if kind is None:
        return shape
    factored = is_factored(shape)
    if kind == "row":
        return shape[:-1] + (1,) if factored else (0,)
    if kind == "col":
        return shape[:-2] + (1, shape[-1]) if factored else (0,)
    if kind == "full":
        return (0,) if factored else shape
    raise ValueError(f"unknown slot shape {kind!r}; one of {KINDS} or None")


def present(kind: str | None, shape) -> bool:
    """Whether a param of ``shape`` has a slot of ``kind`` (else it is an empty array)."""
    return kind is None or (kind == "full") != is_factored(tuple(shape))


def check_storage(st) -> None:
    """A factored moment's storage (fusedopt/memory/storage.py's Storage): the param's dtype
    for grads and state, plain stores; else a ValueError naming what to drop."""
    if not (st.param == st.grad == st.state) or st.mode != "plain":
        raise ValueError(f"factored moments are kept in the param's dtype without masters or "
                         f"rounding modes; got {st}: pass grads of the param's dtype and no "
                         "state_dtype, master_weights, stochastic_rounding or "
                         "kahan_summation")
