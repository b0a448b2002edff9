"""fusedopt.torch with 16-bit params against its peers: which peer, units in the last place,
and one step at a time from the peer's own params and state."""

from __future__ import annotations

import torch
import torch_loops as loops
from tolerances import TORCH_16BIT_ULPS

import fusedopt.torch as ft

DTYPES = [torch.bfloat16, torch.float16]

#: Peers run fused=True where torch 2.13 has a fused CPU kernel that steps 16-bit params.
#: Not SGD: its fused CPU kernel leaves the vectorized body of a 16-bit param unstepped
#: (test_torch_16bit.py::test_torch_fused_sgd_skips_16bit_params shows it), so SGD's
#: peer is its default (single-tensor) path.
FUSED_16BIT = {"Adam", "AdamW", "Adagrad"}


def peer(name: str, params, hp: dict):
    extra = dict(fused=True) if fused_peer(name) else {}
    return loops.training(loops.peer_class(name)(params, **hp, **extra))


def fused_peer(name: str) -> bool:
    return loops.peer_class(name).__name__ in FUSED_16BIT


def spacing(x: torch.Tensor) -> torch.Tensor:
    """The gap from |x| to the next value of x's (16-bit) dtype away from zero, float64."""
    m = x.abs()
    up = (m.view(torch.int16) + 1).view(m.dtype)
    return up.double() - m.double()


def ulps(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| in units of the last place of ``theirs``' dtype at its largest
    magnitude (``ours`` rounded to that dtype first: fusedopt may keep wider state)."""
    a, b = ours.detach().to(theirs.dtype).double(), theirs.detach().double()
    top = theirs.detach().abs().max().reshape(1)
    return float((a - b).abs().max() / spacing(top)[0])


def bound(name: str, hp: dict, what: str) -> tuple[float, float]:
    """(ulps, absolute) bound of one step of ``what`` ("param" or a state key): see
    tolerances.TORCH_16BIT_ULPS."""
    kind = "fused" if fused_peer(name) else "single"
    extra = 0.0
    if name == "lion" and what == "param":
        # lion_pytorch rounds b1 m + (1 - b1) g to 16 bits before its sign: where that
        # rounds to zero its step is 0, not +-lr (fusedopt takes the sign in fp32).
        extra = hp.get("lr", 1e-4)
    return TORCH_16BIT_ULPS[kind], extra


def take_peer_values(opt, model, peer_opt, peer_model) -> None:
    """Copy the peer's params and state into fusedopt's (widening where fusedopt keeps wider
    state: exact), so that the next step starts from the same values."""
    with torch.no_grad():
        for p, q in zip(model.parameters(), peer_model.parameters()):
            p.copy_(q)
            for key, value in peer_opt.state[q].items():
                if key not in ("step", *loops.DERIVED):
                    opt.state[p][key].copy_(value)


def loss_and_grads(model, x, y, twin=None) -> None:
    """Backward through ``model``; ``twin`` gets copies of its grads."""
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if twin is not None:
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()


def fused(name: str, params, hp: dict, **storage):
    return loops.training(ft.CLASSES[name](params, **hp, **storage))
