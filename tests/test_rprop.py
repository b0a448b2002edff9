"""Rprop against torch.optim.Rprop: 50 steps of a real autograd loop, two non-default
settings and maximize, params within 1e-6 relative and the state under torch's keys
(fusedopt/algorithms/rprop.py is the whole optimizer)."""

import pytest
import torch
from peer_loop import STEPS, model, relative, train

import fusedopt.torch


@pytest.mark.parametrize("hp", [dict(lr=3e-3, etas=(0.3, 1.5), step_sizes=(1e-4, 0.05)),
                                dict(lr=0.02, etas=(0.7, 1.1), step_sizes=(0.0, 1.0)),
                                dict(lr=5e-3, maximize=True)])
def test_rprop_matches_torch_in_a_training_loop(hp):
    ours, optimizer = train(lambda ps: fusedopt.torch.Rprop(ps, **hp))
    theirs, peer = train(lambda ps: torch.optim.Rprop(ps, **hp))
    for a, b in zip(ours, theirs):
        assert relative(a, b) <= 1e-6
    shrunk = grown = 0
    for p, q in zip(optimizer.param_groups[0]["params"], peer.param_groups[0]["params"]):
        for key in ("prev", "step_size"):
            a, b = optimizer.state[p][key], peer.state[q][key]
            assert relative(a, b) <= 1e-6, key
        assert float(optimizer.state[p]["step"]) == STEPS
        size = peer.state[q]["step_size"]
        shrunk += int((size < hp["lr"]).sum())
        grown += int((size > hp["lr"]).sum())
    assert shrunk and grown  # both factors were taken


def test_the_step_size_starts_at_the_learning_rate_and_stays_clamped():
    w = torch.nn.Parameter(torch.zeros(4))
    optimizer = fusedopt.torch.Rprop([w], lr=0.25, etas=(0.5, 2.0), step_sizes=(0.125, 1.0))
    sizes = []
    for t in range(4):
        w.grad = torch.tensor([1.0, -1.0, 0.0, (-1.0) ** t])
        optimizer.step()
        sizes.append(optimizer.state[w]["step_size"].tolist())
    # lr at the first step; doubled while the sign holds, up to 1; a zero grad keeps its
    # size; a flip halves it (down to 0.125) and does not move, the step after moves again.
    assert sizes == [[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.25, 0.125],
                     [1.0, 1.0, 0.25, 0.125], [1.0, 1.0, 0.25, 0.125]]
    assert w.tolist() == [-2.75, 2.75, 0.0, -0.375]


def test_rprop_state_dict_loads_into_torch():
    _, optimizer = train(lambda ps: fusedopt.torch.Rprop(ps, lr=1e-2))
    peer = torch.optim.Rprop(model().parameters(), lr=1e-2)
    peer.load_state_dict(optimizer.state_dict())
    assert set(peer.state_dict()["state"][0]) == {"step", "prev", "step_size"}


def test_bad_etas_and_step_sizes_are_refused_with_torchs_names():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"etas\[0\] must be in \(0, 1\)"):
        fusedopt.torch.Rprop(params, etas=(1.0, 0.5))
    with pytest.raises(ValueError, match=r"etas\[1\] must be a finite number > 1"):
        fusedopt.torch.Rprop(params, etas=(0.5, 1.0))
    with pytest.raises(ValueError, match=r"step_sizes must be a pair"):
        fusedopt.torch.Rprop(params, step_sizes=1e-6)
    with pytest.raises(ValueError, match=r"min_step_size must be <= max_step_size"):
        fusedopt.torch.Rprop(params, step_sizes=(2.0, 1.0))
