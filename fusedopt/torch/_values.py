"""The torch door's small values: what it holds of each param the engine steps, and a param
group's values as the engine takes them and as a step compares them with the last."""

from __future__ import annotations

import torch


class Held:
    """A param the engine steps: its position, the memory stepped (the engine's view of it:
    fusedopt/torch/_layout.py, ``layout`` None where that is the param itself), and that
    memory's address when it was taken (a param whose ``.data`` was replaced has moved)."""

    __slots__ = ("position", "memory", "address", "sharded", "layout")

    def __init__(self, position: int, memory, sharded: bool, layout):
        self.position, self.memory, self.sharded = position, memory, sharded
        self.layout = layout
        self.address = memory.data_ptr()


def scalar_dtype():
    # torch's own choice for ``step``: float32, float64 under a float64 default dtype.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def plain(value):
    """A group value as compared from step to step and handed to the engine: numbers for
    1-element tensors (torch takes a tensor lr of any 1-element shape, and a scheduler may
    fill it in place), tuples of numbers for betas."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value
    if isinstance(value, (tuple, list)):
        return tuple(plain(v) for v in value)
    return value


def rounds(grads: list, positions: list) -> list:
    """``(grads, positions)`` split so that no round holds a position twice: the k-th
    occurrence of a position goes to round k."""
    out: list = []
    seen: dict = {}
    for g, pos in zip(grads, positions):
        k = seen[pos] = seen.get(pos, -1) + 1
        if k == len(out):
            out.append(([], []))
        out[k][0].append(g)
        out[k][1].append(pos)
    return out or [([], [])]


_PLAIN_TYPES = (float, int, bool, str, type(None))


def immutable(values: tuple) -> bool:
    """Whether ``values`` are numbers, strings, None or tuples of them: values that nothing
    can change in place, so comparing them as they are is comparing them as plain would."""
    return all(type(v) in _PLAIN_TYPES or (type(v) is tuple and immutable(v)) for v in values)


def same(kept: tuple, raw: tuple) -> bool:
    """``raw`` (a group's values as they are) equals ``kept`` (immutable ones)."""
    try:
        return bool(kept == raw)
    except (RuntimeError, ValueError, TypeError):  # a tensor of several elements, say
        return False
