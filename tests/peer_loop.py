"""The small autograd loop the peer tests train with: a two-layer net on a fixed regression,
the same seeds for fusedopt's optimizer and its peer, so that their params can be compared
step for step."""

from __future__ import annotations

import torch

STEPS = 50


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def train(make_optimizer, steps: int = STEPS, net: torch.nn.Module | None = None):
    """``steps`` steps of ``make_optimizer(params)`` on ``net`` (default: a fresh
    :func:`model`); returns (copies of the params, the optimizer)."""
    net = net or model()
    optimizer = make_optimizer(net.parameters())
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    target = torch.sin(data.sum(dim=1, keepdim=True))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(data), target)
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in net.parameters()], optimizer


def relative(a, b) -> float:
    """The largest difference relative to the largest magnitude (0 where both are all 0)."""
    worst = float((a - b).abs().max())
    return worst / float(b.abs().max()) if worst else 0.0
