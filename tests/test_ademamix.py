"""AdEMAMix against bitsandbytes' 32-bit AdEMAMix on the CPU: 50 steps of a real autograd
loop in two non-default settings (one with both warm-ups), params within 1e-6 relative and
moments within 1e-5 (fusedopt/algorithms/ademamix.py is the whole optimizer).

Params are compared relative to the model's largest param: the one-element output bias ends
near zero (-0.0015 at lr 5e-3), where bitsandbytes' in-place ``add_(x, alpha)`` (a fused
multiply-add in torch's vectorized CPU loop, one rounding where fusedopt's rule rounds twice)
leaves ulp-level differences that a ratio to that bias alone magnifies (1e-8 apart, 7e-6 of
the bias; 1.3e-7 of the model's scale).

bitsandbytes keeps m1 and m2 stacked in one ``state1`` tensor and ``step`` as an int;
fusedopt.torch.AdEMAMix keeps them under its own keys (``m1``, ``m2``, ``nu``, ``step`` a
float32 tensor), so checkpoints do not interchange with bitsandbytes' state_dict."""

import pytest
import torch
from peer_loop import STEPS, relative, train

import fusedopt.torch

bnb = pytest.importorskip("bitsandbytes", reason="the peer: pip install fusedopt[peers]")






@pytest.mark.parametrize("hp", [
    dict(lr=1e-2, betas=(0.8, 0.99, 0.999), alpha=3.0, t_alpha=30, t_beta3=40, eps=1e-6,
         weight_decay=0.1),
    dict(lr=3e-3, betas=(0.9, 0.95, 0.99), alpha=8.0, eps=1e-7, weight_decay=0.0)])
def test_ademamix_matches_bitsandbytes_in_a_training_loop(hp):
    ours, optimizer = train(lambda ps: fusedopt.torch.AdEMAMix(ps, **hp))
    theirs, peer = train(lambda ps: bnb.optim.AdEMAMix(ps, **hp))
    scale = max(float(b.abs().max()) for b in theirs)
    for a, b in zip(ours, theirs):
        assert float((a - b).abs().max()) <= 1e-6 * scale
    for p, q in zip(optimizer.param_groups[0]["params"], peer.param_groups[0]["params"]):
        mine, its = optimizer.state[p], peer.state[q]
        for key, theirs_of in (("m1", its["state1"][0]), ("m2", its["state1"][1]),
                               ("nu", its["state2"])):
            # 1e-5, as for RAdam's moments: EMAs of grads that cancel as the loss flattens
            assert relative(mine[key], theirs_of) <= 1e-5, key
        assert float(mine["step"]) == its["step"] == STEPS


def test_the_warm_ups_are_bitsandbytes_schedules():
    """alpha_t and beta3_t as the host computes them, against the paper's closed forms at
    points they are known: the start and end of each warm-up."""
    from fusedopt.algorithms.ademamix import warmed_up

    hp = dict(alpha=5.0, beta_1=0.9, beta_3=0.9999, t_alpha=100, t_beta3=200)
    assert warmed_up(hp, 50)[0] == pytest.approx(2.5)
    assert warmed_up(hp, 100)[0] == warmed_up(hp, 400)[0] == 5.0
    assert warmed_up(hp, 0)[1] == pytest.approx(0.9)      # starts at beta_1
    assert warmed_up(hp, 200)[1] == pytest.approx(0.9999)  # reaches beta_3
    half_lives = [1 / -__import__("math").log2(warmed_up(hp, t)[1]) for t in (0, 100, 200)]
    assert half_lives[1] - half_lives[0] == pytest.approx(half_lives[2] - half_lives[1])


def test_8bit_and_paged_state_are_refused_with_the_reason():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="optim_bits must be 32"):
        fusedopt.torch.AdEMAMix(params, optim_bits=8)
    with pytest.raises(ValueError, match="is_paged must be False"):
        fusedopt.torch.AdEMAMix(params, is_paged=True)
    with pytest.raises(ValueError, match=r"betas must be a tuple of 3"):
        fusedopt.torch.AdEMAMix(params, betas=(0.9, 0.999))
