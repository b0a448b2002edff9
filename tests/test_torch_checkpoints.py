"""Checkpoints interchange with torch.optim both ways: torch -> fusedopt -> continue, and
fusedopt -> torch -> continue, each equal to the uninterrupted run; through torch.save too."""

import copy
import io

import pytest
import torch
import torch_loops as loops

import fusedopt.torch as ft
from fusedopt.torch._names import ROWS

FIRST, SECOND = 20, 20
DTYPE = torch.float64  # the comparisons are to rounding: see tolerances.VS_TORCH_LOOP

#: A setting per optimizer with every state key its class can have.
FULL = {"adam": dict(lr=1e-2, amsgrad=True), "adamw": dict(lr=1e-2, amsgrad=True),
        "sgd": dict(lr=0.05, momentum=0.9), "rmsprop": dict(momentum=0.5, centered=True),
        "adagrad": dict(lr=0.05), "adadelta": {}, "adamax": {}, "nadam": {},
        "lion": dict(lr=1e-3, weight_decay=0.1)}


def _through_torch_save(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("first, then", [("peer", "fused"), ("fused", "peer")],
                         ids=["torch-to-fusedopt", "fusedopt-to-torch"])
@pytest.mark.parametrize("name", sorted(set(ROWS) - loops.FOREIGN_STATE))
def test_a_checkpoint_continues_in_the_other_library(name, first, then):
    hp = FULL.get(name, {})  # a new row: torch's defaults
    x, y = loops.data(dtype=DTYPE)
    whole, part = loops.twins(dtype=DTYPE, bias=loops.biased(name))
    whole_opt = loops.make(name, whole.parameters(), hp, then)
    loops.train(whole, whole_opt, FIRST + SECOND, x, y)

    before = loops.make(name, part.parameters(), hp, first)
    loops.train(part, before, FIRST, x, y)
    saved = _through_torch_save(before.state_dict())
    resumed = loops.make(name, part.parameters(), hp, then)
    resumed.load_state_dict(saved)
    loops.train(part, resumed, SECOND, x, y, start=FIRST)

    loops.assert_close(part, whole)
    loops.assert_states_close(resumed, whole_opt)


def test_loading_copies_the_state_and_leaves_the_checkpoint_alone():
    model = loops.mlp(dtype=DTYPE)
    x, y = loops.data(dtype=DTYPE)
    peer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loops.train(model, peer, 3, x, y)
    saved = peer.state_dict()
    kept = copy.deepcopy(saved)
    opt = ft.Adam(model.parameters(), lr=1e-2)
    opt.load_state_dict(saved)
    loops.train(model, opt, 3, x, y)
    for i, entry in kept["state"].items():
        assert all(torch.equal(entry[k], saved["state"][i][k]) for k in entry)
    assert float(opt.state_dict()["state"][0]["step"]) == 6.0


def test_a_refused_checkpoint_changes_nothing():
    model = loops.mlp(dtype=DTYPE)
    x, y = loops.data(dtype=DTYPE)
    opt = ft.Adam(model.parameters(), lr=1e-2)
    loops.train(model, opt, 2, x, y)
    good = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(good)
    del bad["state"][3]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"param group 0, param 3 .*missing \['exp_avg_sq'\]"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == good["param_groups"]
    for i, entry in good["state"].items():
        assert all(torch.equal(entry[k], after["state"][i][k]) for k in entry)
    loops.train(model, opt, 1, x, y)  # and it still steps


def test_a_nadam_checkpoint_whose_mu_product_is_not_the_steps_is_refused():
    model = loops.mlp(dtype=DTYPE)
    x, y = loops.data(dtype=DTYPE)
    peer = torch.optim.NAdam(model.parameters(), betas=(0.9, 0.999))
    loops.train(model, peer, 3, x, y)
    saved = peer.state_dict()
    saved["param_groups"][0]["betas"] = (0.8, 0.999)   # as if beta1 changed mid-run
    opt = ft.NAdam(model.parameters())
    with pytest.raises(ValueError, match="mu_product .* is not the product"):
        opt.load_state_dict(saved)
    saved["param_groups"][0]["betas"] = (0.9, 0.999)
    opt.load_state_dict(saved)
    assert float(opt.state[next(model.parameters())]["mu_product"]) == \
        float(saved["state"][0]["mu_product"])


def test_sgd_momentum_buffer_appears_at_the_first_step_as_in_torch():
    a, b = loops.twins(dtype=DTYPE)
    x, y = loops.data(dtype=DTYPE)
    opt_a, opt_b = ft.SGD(a.parameters(), lr=0.1, momentum=0.9), \
        torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    assert opt_a.state_dict()["state"] == opt_b.state_dict()["state"] == {}
    loops.train(a, opt_a, 1, x, y)
    loops.train(b, opt_b, 1, x, y)
    assert {i: sorted(s) for i, s in opt_a.state_dict()["state"].items()} == \
        {i: ["momentum_buffer"] for i in range(6)}
    loops.assert_states_close(opt_a, opt_b)


def test_a_deep_copy_steps_on_its_own_params():
    model = loops.mlp(dtype=DTYPE)
    x, y = loops.data(dtype=DTYPE)
    opt = ft.AdamW(model.parameters(), lr=1e-2)
    loops.train(model, opt, 2, x, y)
    twin_model, twin_opt = copy.deepcopy((model, opt))
    loops.train(model, opt, 3, x, y)
    loops.train(twin_model, twin_opt, 3, x, y)
    loops.assert_close(twin_model, model, 0.0)
    assert float(twin_opt.state_dict()["state"][0]["step"]) == 5.0


def test_a_pickled_optimizer_takes_a_new_group_and_steps():
    import pickle
    model = loops.mlp(dtype=DTYPE)
    x, y = loops.data(dtype=DTYPE)
    opt = ft.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loops.train(model, opt, 2, x, y)
    model, opt = pickle.loads(pickle.dumps((model, opt)))
    extra = torch.nn.Parameter(torch.ones(3, dtype=DTYPE))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    loops.train(model, opt, 1, x, y)
    extra.grad = torch.ones(3, dtype=DTYPE)
    opt.step()
    assert torch.allclose(extra.detach(), torch.full((3,), 0.5, dtype=DTYPE))
    assert sorted(opt.state_dict()["state"]) == list(range(7))
