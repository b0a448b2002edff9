"""fusedopt.torch checkpoints of 16-bit params: bit for bit with their dtypes (bf16 state,
fp32 state, masters, remainders) through torch.save; torch.optim's bf16 checkpoints load and
go back; what is refused (fusedopt/torch/_checkpoint.py says why), and the storage
arguments' errors, each changing nothing."""

import copy
import io

import numpy as np
import pytest
import torch
import torch16_runs as runs
import torch_loops as loops

import fusedopt.torch as ft

FIRST, SECOND = 8, 8
BF16 = torch.bfloat16


def _through_torch_save(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().contiguous().reshape(-1), b.detach().contiguous().reshape(-1)
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        (a.view(torch.uint8) == b.view(torch.uint8)).all())


def _assert_same_run(model_a, opt_a, model_b, opt_b) -> None:
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert _same_bits(p, q)
    a, b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        assert all(_same_bits(a[i][k], b[i][k]) for k in a[i]), i


def _run(model, opt, steps, x, y):
    for _ in range(steps):
        opt.zero_grad()
        runs.loss_and_grads(model, x, y)
        opt.step()


STORAGES = {"bf16 state": {}, "fp32 state": dict(state_dtype="float32"),
            "master": dict(master_weights=True), "remainder": dict(master_weights="remainder")}


@pytest.mark.parametrize("storage", list(STORAGES), ids=list(STORAGES))
@pytest.mark.parametrize("name", ["adamw", "sgd", "nadam"])
def test_a_checkpoint_continues_bit_for_bit(name, storage):
    """Save after FIRST steps, load into a new optimizer made with torch's defaults only
    (the checkpoint's groups carry state_dtype and master_weights), continue: the same
    bits, dtypes and keys as the uninterrupted run."""
    hp = dict(lr=0.05, momentum=0.9) if name == "sgd" else dict(lr=1e-2)
    x, y = loops.data(dtype=BF16)
    whole, part = loops.twins(dtype=BF16)
    whole_opt = runs.fused(name, whole.parameters(), hp, **STORAGES[storage])
    _run(whole, whole_opt, FIRST + SECOND, x, y)
    before = runs.fused(name, part.parameters(), hp, **STORAGES[storage])
    _run(part, before, FIRST, x, y)
    saved = _through_torch_save(before.state_dict())
    kept = {k: v for k, v in saved["state"][0].items()}
    resumed = runs.fused(name, part.parameters(), hp)
    resumed.load_state_dict(saved)
    assert all(_same_bits(resumed.state[next(part.parameters())][k], v)
               for k, v in kept.items())
    _run(part, resumed, SECOND, x, y)
    _assert_same_run(part, resumed, whole, whole_opt)
    extra = {"master": {"master"}, "remainder": {"remainder"}}.get(storage, set())
    assert extra <= set(resumed.state_dict()["state"][0])


@pytest.mark.parametrize("name", ["adam", "adagrad"])
def test_torch_optim_bf16_checkpoints_load_and_go_back_bit_for_bit(name):
    """torch.optim (fused) with bf16 params -> fusedopt.torch -> torch.optim: the state
    tensors keep their bf16 bits and dtypes both ways, and each continues."""
    x, y = loops.data(dtype=BF16)
    model = loops.mlp(dtype=BF16)
    peer = runs.peer(name, model.parameters(), dict(lr=1e-2))
    _run(model, peer, FIRST, x, y)
    saved = _through_torch_save(peer.state_dict())
    ours = runs.fused(name, model.parameters(), dict(lr=1e-2))
    ours.load_state_dict(saved)
    mine = ours.state_dict()
    for i, entry in saved["state"].items():
        assert all(_same_bits(mine["state"][i][k], v) for k, v in entry.items()), i
    _run(model, ours, SECOND, x, y)
    back = runs.peer(name, model.parameters(), dict(lr=1e-2))
    back.load_state_dict(_through_torch_save(ours.state_dict()))
    for i, entry in ours.state_dict()["state"].items():
        assert all(_same_bits(back.state_dict()["state"][i][k], v) for k, v in entry.items())
    _run(model, back, 2, x, y)
    assert float(back.state_dict()["state"][0]["step"]) == FIRST + SECOND + 2


def test_fp16_state_from_torch_is_widened_exactly():
    x, y = loops.data(dtype=torch.float16)
    model = loops.mlp(dtype=torch.float16)
    peer = runs.peer("adam", model.parameters(), dict(lr=1e-2))
    _run(model, peer, 3, x, y)
    saved = peer.state_dict()
    ours = ft.Adam(model.parameters(), lr=1e-2)
    ours.load_state_dict(saved)
    for i, entry in ours.state_dict()["state"].items():
        assert entry["exp_avg"].dtype == torch.float32
        assert torch.equal(entry["exp_avg"], saved["state"][i]["exp_avg"].float())


def test_a_master_run_handed_to_torch_optim_and_back_is_refused():
    """torch.optim takes a checkpoint with masters (it keeps the entry, cast to bf16, and
    never steps it; the fp32 moments are cast to bf16 too); back in fusedopt.torch that
    master is refused, naming the fix, and the checkpoint loads once its master entries are
    deleted: masters made anew from the params, the moments widened exactly."""
    x, y = loops.data(dtype=BF16)
    model = loops.mlp(dtype=BF16)
    ours = ft.AdamW(model.parameters(), lr=1e-2, master_weights=True)
    _run(model, ours, 3, x, y)
    peer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    peer.load_state_dict(ours.state_dict())
    _run(model, peer, 2, x, y)
    saved = peer.state_dict()
    assert saved["state"][0]["master"].dtype == BF16
    fresh = ft.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match=r"param group 0, param 0 .*saved 'master' is "
                                         r"bfloat16, but this group keeps it in float32"):
        fresh.load_state_dict(saved)
    assert not fresh.state and fresh.param_groups[0]["master_weights"] is False
    for entry in saved["state"].values():
        del entry["master"]
    fresh.load_state_dict(saved)
    p = next(model.parameters())
    assert torch.equal(fresh.state[p]["master"], p.detach().float())
    assert fresh.state[p]["exp_avg"].dtype == torch.float32
    assert torch.equal(fresh.state[p]["exp_avg"], saved["state"][0]["exp_avg"].float())


def test_a_master_entry_without_master_weights_is_refused():
    x, y = loops.data(dtype=BF16)
    model = loops.mlp(dtype=BF16)
    ours = ft.Adam(model.parameters(), lr=1e-2, master_weights="remainder")
    _run(model, ours, 2, x, y)
    saved = copy.deepcopy(ours.state_dict())
    for group in saved["param_groups"]:
        group["master_weights"] = False
    with pytest.raises(ValueError, match=r"param group 0, param 0 .*has a 'remainder', but "
                                         r"this group keeps master_weights=False: pass "
                                         r"master_weights='remainder'"):
        ft.Adam(model.parameters(), lr=1e-2).load_state_dict(saved)


@pytest.mark.parametrize("params, kwargs, kind, match", [
    ([BF16], dict(state_dtype="float64"), ValueError,
     r"param group 0, param 0 \(shape \(3,\)\) is bfloat16, whose state can be float32 or "
     r"bfloat16, not state_dtype='float64'"),
    ([torch.float64], dict(state_dtype="bfloat16"), ValueError,
     r"param group 0, param 0 .* is float64, whose state can be float64, not "
     r"state_dtype='bfloat16'"),
    ([torch.float16], dict(master_weights="remainder"), ValueError,
     r"param group 0, param 0 .* is float16; master_weights='remainder' is not possible: "
     r"remainder masters need bfloat16 params .* use master_weights=True for float16"),
    ([BF16, torch.float32], dict(master_weights=True), ValueError,
     r"param group 0, param 1 .* is float32; master_weights=True is not possible: .*give "
     r"the float32 params a param group of their own with master_weights=False"),
    ([BF16], dict(master_weights=True, state_dtype="bfloat16"), ValueError,
     r"kept with master_weights=True, whose state can be float32, not "
     r"state_dtype='bfloat16'; a float32 master keeps float32 state"),
    ([BF16], dict(state_dtype="fp8"), ValueError,
     r"param group 0: state_dtype must be None .*, got 'fp8'"),
    ([BF16], dict(state_dtype=torch.int8), ValueError,
     r"param group 0: state_dtype must be None .*, got 'int8'"),
    ([BF16], dict(master_weights="yes"), ValueError,
     r"param group 0: master_weights must be False, True .* or 'remainder' .*, got 'yes'"),
], ids=["bf16-float64-state", "float64-bf16-state", "fp16-remainder", "fp32-master",
        "master-bf16-state", "bad-state-dtype", "torch-int8", "bad-master"])
def test_storage_errors_name_the_argument_group_and_fix(params, kwargs, kind, match):
    ok = torch.nn.Parameter(torch.ones(3, dtype=BF16))
    opt = ft.Adam([ok], lr=1e-2)
    bad = [torch.nn.Parameter(torch.ones(3, dtype=d)) for d in params]
    with pytest.raises(kind, match=match.replace("param group 0", "param group 1")):
        opt.add_param_group({"params": bad, **kwargs})
    assert len(opt.param_groups) == 1 and len(opt._engine.hypers) == 1
    with pytest.raises(kind, match=match):
        ft.Adam(bad, lr=1e-2, **kwargs)


def test_changing_the_storage_after_the_first_step_is_refused():
    p = torch.nn.Parameter(torch.ones(3, dtype=BF16))
    opt = ft.Adam([p], lr=1e-2)
    p.grad = torch.ones(3, dtype=BF16)
    opt.step()
    before = p.detach().clone()
    opt.param_groups[0]["state_dtype"] = "float32"
    with pytest.raises(ValueError, match=r"param group 0: its params already hold state kept "
                                         r"with state_dtype='param', master_weights=False"):
        opt.step()
    assert torch.equal(p.detach(), before) and opt.state[p]["exp_avg"].dtype == BF16
    assert np.isclose(float(opt.state[p]["step"]), 1.0)
