"""RAdam against torch.optim.RAdam: both weight-decay settings, 50 steps of a real autograd
loop, params within 1e-6 relative (fusedopt/algorithms/radam.py is the whole optimizer)."""

import pytest
import torch
from peer_loop import STEPS, model, train

import fusedopt.torch


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("hp", [dict(lr=1e-2, weight_decay=0.1),
                                dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)])
def test_radam_matches_torch_in_a_training_loop(hp, decoupled):
    ours, optimizer = train(lambda ps: fusedopt.torch.RAdam(
        ps, decoupled_weight_decay=decoupled, **hp))
    theirs, peer = train(lambda ps: torch.optim.RAdam(
        ps, decoupled_weight_decay=decoupled, **hp))
    for a, b in zip(ours, theirs):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-6
    # Past step 5 (rho_t > 5) the rectified branch ran; the state is torch's, by torch's keys.
    for p, q in zip(optimizer.param_groups[0]["params"], peer.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = optimizer.state[p][key], peer.state[q][key]
            assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5, key
        assert float(optimizer.state[p]["step"]) == STEPS


def test_radam_state_dict_loads_into_torch():
    _, optimizer = train(lambda ps: fusedopt.torch.RAdam(ps, lr=1e-2))
    net = model()
    peer = torch.optim.RAdam(net.parameters(), lr=1e-2)
    peer.load_state_dict(optimizer.state_dict())
    assert set(peer.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
