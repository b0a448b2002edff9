"""fusedopt.torch's master weights: with ``master_weights=True`` a bf16 model steps as its
fp32 copy does (the master is fusedopt's fp32 run bit for bit, within float32 rounding of
torch.optim's fp32 run, and the param is the master rounded); ``"remainder"`` keeps the
same bits in two bytes."""

import numpy as np
import pytest
import reference
import torch
import torch16_runs as runs
import torch_loops as loops
from tolerances import VS_TORCH_SHADOW

from fusedopt.torch._names import ROWS

STEPS = 20


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().view(torch.int16 if t.element_size() == 2 else
                                        torch.int32).numpy().copy()


def _rounded_away(master: torch.Tensor) -> torch.Tensor:
    """The float32 master to bf16, nearest with ties away from zero (tests/reference.py)."""
    return torch.from_numpy(reference.nearest_away(master.numpy(), "bfloat16")).to(
        torch.bfloat16)


def _from_remainder(param: torch.Tensor, remainder: torch.Tensor) -> torch.Tensor:
    """(bf16 bits << 16) + the int16 remainder, as float32 bits."""
    hi = param.detach().view(torch.int16).numpy().astype(np.uint16).astype(np.uint32)
    bits = (hi << 16) + remainder.numpy().astype(np.int32).view(np.uint32)
    return torch.from_numpy(bits.view(np.float32))


def _setting(name):
    return {"sgd": dict(lr=0.05, momentum=0.9), "lion": dict(lr=1e-3)}.get(name, {})


#: Muon keeps plain storage (fusedopt/engine/orthogonal.py refuses masters).
MASTERED = sorted(set(ROWS) - loops.MATRIX_ONLY)


@pytest.mark.parametrize("name", MASTERED)
def test_master_run_is_the_fp32_run_and_the_param_its_rounding(name):
    """Three runs fed the same grads (a bf16 model's, widened for the fp32 ones): fusedopt
    with masters on the bf16 model, fusedopt on an fp32 copy, the peer on an fp32 copy.
    Each step: master == fusedopt's fp32 run bit for bit, param == master rounded, master
    within VS_TORCH_SHADOW of the peer's fp32 run, param within 1 ulp of the peer's run
    rounded (the two fp32 values round apart only next to a rounding boundary)."""
    if loops.refuses_16bit(name):
        return
    hp = _setting(name)
    model = loops.mlp(dtype=torch.bfloat16)
    fp32, peer_model = (loops.mlp(dtype=torch.float32) for _ in range(2))
    for m in (fp32, peer_model):
        m.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    x, y = loops.data(dtype=torch.bfloat16)
    opt = runs.fused(name, model.parameters(), hp, master_weights=True)
    opt32 = runs.fused(name, fp32.parameters(), hp)
    peer = loops.make(name, peer_model.parameters(), hp, "peer")
    for t in range(STEPS):
        for o in (opt, opt32, peer):
            o.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        for p, q, r in zip(model.parameters(), fp32.parameters(), peer_model.parameters()):
            q.grad, r.grad = p.grad.float(), p.grad.float()
        for o in (opt, opt32, peer):
            o.step()
        for k, (p, q, r) in enumerate(zip(model.parameters(), fp32.parameters(),
                                           peer_model.parameters())):
            master = opt.state[p]["master"]
            assert np.array_equal(_bits(master), _bits(q)), (t, k, "master vs fp32 run")
            assert np.array_equal(_bits(p), _bits(_rounded_away(master))), (t, k)
            assert loops.relative(master, r) <= VS_TORCH_SHADOW, (t, k)
            assert runs.ulps(p, _rounded_away(r.detach())) <= 1, (t, k)
    assert loops.relative(next(model.parameters()).float(),
                          next(loops.mlp(dtype=torch.bfloat16).parameters()).float()) > 1e-3


@pytest.mark.parametrize("name", MASTERED)
def test_remainder_run_has_the_master_runs_bits(name):
    if loops.refuses_16bit(name):
        return
    hp = _setting(name)
    models = loops.twins(dtype=torch.bfloat16)
    x, y = loops.data(dtype=torch.bfloat16)
    opts = [runs.fused(name, m.parameters(), hp, master_weights=w)
            for m, w in zip(models, (True, "remainder"))]
    for t in range(STEPS):
        for o in opts:
            o.zero_grad()
        runs.loss_and_grads(models[0], x, y, twin=models[1])
        for o in opts:
            o.step()
        for k, (p, q) in enumerate(zip(*(m.parameters() for m in models))):
            assert np.array_equal(_bits(p), _bits(q)), (t, k, "param")
            a, b = opts[0].state[p], opts[1].state[q]
            assert set(a) - {"master"} == set(b) - {"remainder"}
            assert b["remainder"].dtype == torch.int16
            assert np.array_equal(_bits(a["master"]), _bits(_from_remainder(q, b["remainder"])))
            for key in set(a) - {"master", "step"}:
                assert np.array_equal(_bits(a[key]), _bits(b[key])), (t, k, key)
