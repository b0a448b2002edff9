"""ASGD against torch.optim.ASGD: 50 steps of a real autograd loop in two non-default
settings (one averaging from step 10 on), params within 1e-6 relative, the state under
torch's keys with eta and mu as torch carries them (fusedopt/algorithms/asgd.py is the whole
optimizer)."""

import copy

import pytest
import torch
from peer_loop import model, relative, train

import fusedopt.torch


@pytest.mark.parametrize("hp", [dict(lr=0.05, lambd=1e-2, alpha=0.5, t0=10, weight_decay=0.1),
                                dict(lr=0.02, lambd=0.5, alpha=1.0, t0=0, maximize=True)])
def test_asgd_matches_torch_in_a_training_loop(hp):
    ours, optimizer = train(lambda ps: fusedopt.torch.ASGD(ps, **hp))
    theirs, peer = train(lambda ps: torch.optim.ASGD(ps, **hp))
    for a, b in zip(ours, theirs):
        assert relative(a, b) <= 1e-6
    for p, q in zip(optimizer.param_groups[0]["params"], peer.param_groups[0]["params"]):
        mine, its = optimizer.state[p], peer.state[q]
        assert list(mine) == list(its) == ["step", "eta", "mu", "ax"]
        assert relative(mine["ax"], its["ax"]) <= 1e-6
        assert not torch.equal(its["ax"], q)  # averaging started: ax is not the param
        for key in ("step", "eta", "mu"):
            assert mine[key].dtype == its[key].dtype and float(mine[key]) == float(its[key])


def test_a_checkpoint_continues_both_ways():
    hp = dict(lr=0.05, lambd=1e-2, t0=5)
    whole, _ = train(lambda ps: torch.optim.ASGD(ps, **hp), steps=30)
    for first, then in ((fusedopt.torch.ASGD, torch.optim.ASGD),
                        (torch.optim.ASGD, fusedopt.torch.ASGD)):
        net = model()
        _, before = train(lambda ps: first(ps, **hp), steps=20, net=net)
        saved = copy.deepcopy(before.state_dict())
        resumed = then(net.parameters(), **hp)
        resumed.load_state_dict(saved)
        part, _ = train(lambda ps, opt=resumed: opt, steps=10, net=net)
        for a, b in zip(part, whole):
            assert relative(a, b) <= 1e-6


def test_a_checkpoint_whose_eta_is_not_the_steps_is_refused():
    _, peer = train(lambda ps: torch.optim.ASGD(ps, lr=0.05), steps=3)
    saved = peer.state_dict()
    saved["state"][0]["eta"] = saved["state"][0]["eta"] * 2
    ours = fusedopt.torch.ASGD(model().parameters(), lr=0.05)
    with pytest.raises(ValueError, match=r"saved eta .* is not the step size"):
        ours.load_state_dict(saved)
