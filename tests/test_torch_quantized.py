"""fusedopt.torch with ``state_dtype="q8"``/``"q4"`` (per param group): training, its
state_dict (codes, scales, map), a resumed run bit for bit, and bitsandbytes' AdamW8bit
state dict loaded and continued; mismatches refused with nothing changed."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt.torch  # noqa: F401  (before torch: one OpenMP pool)
from fusedopt.memory import quant

torch = pytest.importorskip("torch")

LR = 1e-3


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 100, generator=g)
    return x, x[:, :3].argmax(1)


def _train(model, opt, steps):
    x, y = _data()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("fmt", ["q8", "q4", "q8-dynamic"])
def test_state_dict_has_codes_scales_and_map_and_resumes_bit_for_bit(fmt):
    model = _model()
    opt = fusedopt.torch.AdamW(model.parameters(), lr=LR, state_dtype=fmt)
    _train(model, opt, 4)
    saved = opt.state_dict()
    entry = saved["state"][0]  # the 64 x 100 weight: quantized
    n = 6400
    f = quant.FORMATS[fmt]
    assert entry["exp_avg"].dtype == torch.uint8
    assert entry["exp_avg"].numel() == f.code_bytes(n)
    assert entry["exp_avg_absmax"].shape == (f.blocks(n),)
    assert torch.equal(entry["exp_avg_qmap"], torch.from_numpy(quant.qmap(fmt, True)))
    assert torch.equal(entry["exp_avg_sq_qmap"], torch.from_numpy(quant.qmap(fmt, False)))
    assert saved["state"][1]["exp_avg"].dtype == torch.float32  # 64 elements: float32
    assert saved["param_groups"][0]["state_dtype"] == fmt

    other = _model()
    other.load_state_dict(model.state_dict())
    opt2 = fusedopt.torch.AdamW(other.parameters(), lr=LR, state_dtype=fmt)
    opt2.load_state_dict(saved)
    _train(model, opt, 3)
    _train(other, opt2, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def test_groups_choose_their_own_state():
    model = _model()
    opt = fusedopt.torch.AdamW([{"params": model[0].parameters(), "state_dtype": "q4"},
                                {"params": model[2].parameters()}], lr=LR)
    loss0 = _train(model, opt, 1)
    loss = _train(model, opt, 30)
    assert loss < loss0
    assert [str(s).split(", ")[2] for s in opt._engine.storages] == [
        "q4 state", "float32 state", "float32 state", "float32 state"]


def test_param_groups_keep_their_own_maps():
    """A group in q8 (the power map) and one in q8-dynamic: each group's state is its own
    map's codes (decoded with the other map, the step would differ: the engine's state
    decoded with the group's map is the float64 AdamW step's to quantization)."""
    model = _model()
    first, second = model[0], model[2]
    big = torch.nn.Linear(100, 64)
    opt = fusedopt.torch.AdamW([{"params": first.parameters(), "state_dtype": "q8"},
                                {"params": big.parameters(), "state_dtype": "q8-dynamic"}],
                               lr=LR)
    assert second is not None
    for p in (*first.parameters(), *big.parameters()):
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    saved = opt.state_dict()
    power, dynamic = saved["state"][0], saved["state"][2]
    assert torch.equal(power["exp_avg_qmap"], torch.from_numpy(quant.qmap("q8", True)))
    assert torch.equal(dynamic["exp_avg_qmap"], torch.from_numpy(quant.qmap("q8-dynamic",
                                                                            True)))
    # every m is (1 - beta1) * 0.5, the block's absmax: the code of 1.0, the last of both
    # maps; v's (1 - beta2) * 0.25 likewise
    assert torch.all(power["exp_avg"] == 255) and torch.all(dynamic["exp_avg"] == 255)
    assert not torch.equal(power["exp_avg_qmap"], dynamic["exp_avg_qmap"])
    assert [g["state_dtype"] for g in saved["param_groups"]] == ["q8", "q8-dynamic"]


@pytest.mark.parametrize("state_dtype, continues_in", [("q8", "q8-dynamic"),
                                                       ("q8-bitsandbytes", "q8-bitsandbytes")])
def test_a_bitsandbytes_adamw8bit_state_dict_loads_and_continues(state_dtype, continues_in):
    bnb = pytest.importorskip("bitsandbytes")
    peer_model = _model()
    peer = bnb.optim.AdamW8bit(peer_model.parameters(), lr=LR)
    _train(peer_model, peer, 5)
    model = _model()
    model.load_state_dict(peer_model.state_dict())
    opt = fusedopt.torch.AdamW(model.parameters(), lr=LR, state_dtype=state_dtype)
    opt.load_state_dict(peer.state_dict())
    assert opt.param_groups[0]["state_dtype"] == continues_in
    # the codes and scales are bitsandbytes', as they were
    mine = opt.state_dict()["state"][0]
    theirs = peer.state[peer_model[0].weight]
    assert torch.equal(mine["exp_avg"], theirs["state1"])
    assert torch.equal(mine["exp_avg_sq_absmax"], theirs["absmax2"])
    assert float(mine["step"]) == 5
    # one more step from the same state: the same update, to float32's rounding (a state
    # decoded with another map or misplaced scales would move the params by ~lr)
    _train(model, opt, 1)
    _train(peer_model, peer, 1)
    for a, b in zip(model.parameters(), peer_model.parameters()):
        assert torch.max(torch.abs(a - b)) <= 1e-2 * LR
    if state_dtype == "q8-bitsandbytes":  # rounded as bitsandbytes rounds: its codes
        mine = opt.state_dict()["state"][0]
        for ours, key in (("exp_avg", "state1"), ("exp_avg_sq", "state2")):
            same = torch.mean((mine[ours] == theirs[key]).double())
            assert same >= 0.99, f"{ours}: {float(same):.4f} of the codes equal"
    before, after = _train(model, opt, 1), _train(model, opt, 30)
    assert after < before


def test_mismatched_quantized_state_is_refused_and_nothing_changes():
    bnb = pytest.importorskip("bitsandbytes")
    peer_model = _model()
    peer = bnb.optim.AdamW8bit(peer_model.parameters(), lr=LR)
    _train(peer_model, peer, 2)
    model = _model()
    opt = fusedopt.torch.AdamW(model.parameters(), lr=LR)  # float32 state
    _train(model, opt, 1)
    snapshot = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    with pytest.raises(ValueError, match="state_dtype='q8'"):
        opt.load_state_dict(peer.state_dict())
    assert all(torch.equal(snapshot[k], v) for k, v in opt.state[model[0].weight].items())

    q8 = fusedopt.torch.AdamW(model.parameters(), lr=LR, state_dtype="q8")
    _train(model, q8, 1)
    saved = q8.state_dict()
    bad = {"state": {k: dict(v) for k, v in saved["state"].items()},
           "param_groups": saved["param_groups"]}
    bad["state"][0]["exp_avg_qmap"] = torch.linspace(-1, 1, 256)
    codes = q8.state[model[0].weight]["exp_avg"].clone()
    with pytest.raises(ValueError, match="not fusedopt's q8 signed power map .* none of"):
        q8.load_state_dict(bad)
    assert torch.equal(codes, q8.state[model[0].weight]["exp_avg"])
    bad["state"][0]["exp_avg_qmap"] = torch.from_numpy(quant.qmap("q8-dynamic", True))
    with pytest.raises(ValueError, match="it is q8-dynamic's map: give the group "
                                         "state_dtype='q8-dynamic'"):
        q8.load_state_dict(bad)
    assert torch.equal(codes, q8.state[model[0].weight]["exp_avg"])
    bad["state"][0]["exp_avg_qmap"] = saved["state"][0]["exp_avg_qmap"]
    bad["state"][0]["exp_avg_absmax"] = bad["state"][0]["exp_avg_absmax"][:-1]
    with pytest.raises(ValueError, match="float32 scales"):
        q8.load_state_dict(bad)
    assert np.array_equal(codes.numpy(), q8.state[model[0].weight]["exp_avg"].numpy())


def test_a_channels_last_param_steps_saves_and_loads_its_blocks_in_memory_order():
    """Blocks run over a param's memory (channels_last: the channels innermost): the step is
    the engine's over that memory, state_dict's q8 codes are laid out like the param (entry
    [o, c, h, w] is the code of element [o, c, h, w]), a checkpoint resumes bit for bit, and
    loading it into a param laid out otherwise is refused, changing nothing."""
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    torch.manual_seed(0)
    start = torch.randn(32, 16, 3, 3).to(memory_format=torch.channels_last)  # 4608: q8
    grads = [torch.randn(32, 16, 3, 3).contiguous(memory_format=torch.channels_last)
             for _ in range(5)]

    def in_memory_order(t):  # channels_last: (out, h, w, channels)
        return t.detach().permute(0, 2, 3, 1).reshape(-1).numpy()

    w = torch.nn.Parameter(start.clone())
    opt = fusedopt.torch.AdamW([w], state_dtype="q8", **hp)
    flat = in_memory_order(start).copy()
    engine = fusedopt.AdamW(learning_rate=hp["lr"], beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                            weight_decay=0.01, convention="torch", state_dtype="q8")
    for g in grads[:3]:
        w.grad = g
        opt.step()
        engine.apply_gradients([(in_memory_order(g), flat)])
    assert np.array_equal(in_memory_order(w).view(np.uint32), flat.view(np.uint32))
    saved = opt.state_dict()
    codes = saved["state"][0]["exp_avg"]
    assert codes.stride() == w.stride()
    m_codes, _ = quant.codes_and_scales(engine._engine.states[0][0], flat.size, "q8")
    assert np.array_equal(in_memory_order(codes), m_codes)

    resumed = torch.nn.Parameter(w.detach().clone())
    again = fusedopt.torch.AdamW([resumed], state_dtype="q8", **hp)
    again.load_state_dict(saved)
    for g in grads[3:]:
        w.grad = resumed.grad = g
        opt.step()
        again.step()
    assert torch.equal(w, resumed)

    plain = torch.nn.Parameter(w.detach().contiguous())
    other = fusedopt.torch.AdamW([plain], state_dtype="q8", **hp)
    with pytest.raises(ValueError, match="laid out alike"):
        other.load_state_dict(saved)
    assert not other.state
