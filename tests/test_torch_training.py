"""fusedopt.torch in a real autograd loop against torch.optim (lion_pytorch for Lion): an MLP
on synthetic data, cross-entropy, 50 steps, for every optimizer; with an lr scheduler, with
two param groups, with GradScaler and bf16 autocast (and a forced skipped step)."""

import inspect

import pytest
import torch
import torch_loops as loops
from tolerances import VS_TORCH_SHADOW

import fusedopt.torch as ft
from fusedopt.torch._names import ROWS

STEPS = 50
CASES, CASE_IDS = loops.cases()
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("name", sorted(ROWS))
def test_signature_and_defaults_are_the_peers(name):
    ours = inspect.signature(ft.CLASSES[name].__init__).parameters
    theirs = inspect.signature(loops.peer_class(name, real=True).__init__).parameters
    shared = [k for k in theirs if k in ours]
    own = ["state_dtype", "master_weights", "stochastic_rounding", "kahan_summation", "seed"]
    assert list(ours)[-len(own):] == own  # fusedopt's, keyword-only
    assert all(ours[k].kind is inspect.Parameter.KEYWORD_ONLY for k in own)
    if name == "lion":  # lion_pytorch's use_triton and its lr-scaled decay are not offered
        assert shared == ["self", "params", "lr", "betas", "weight_decay"]
    elif name in ("stableadamw", "adan"):  # optimi's kahan_sum is fusedopt's
        # kahan_summation, and its triton and gradient_release choose optimi's own kernels:
        # not offered
        assert shared == ["self", "params", "lr", "betas", "weight_decay", "eps",
                          "decouple_lr", "max_lr", *(("adam_wd",) if name == "adan" else ()),
                          "foreach"]
        # optimi's lr has no default (fusedopt's is 1e-3); its foreach comes after its
        # kahan_sum, positionally, so it is keyword-only here.
        shared = [k for k in shared if k not in ("lr", "foreach")]
    else:
        assert list(ours)[:-len(own)] == list(theirs)
    for k in shared:
        assert (ours[k].kind, ours[k].default) == (theirs[k].kind, theirs[k].default), k


@pytest.mark.parametrize("name", sorted(set(ROWS) - loops.FOREIGN_STATE))
def test_groups_and_state_have_the_peers_keys_values_and_dtypes(name):
    a, b = loops.twins(bias=loops.biased(name))
    x, y = loops.data()
    opt_a, opt_b = loops.make(name, a.parameters(), {}, "fused"), \
        loops.make(name, b.parameters(), {}, "peer")
    loops.assert_states_close(opt_a, opt_b)  # empty before a step, but Adagrad's
    assert bool(opt_a.state_dict()["state"]) == (name == "adagrad") or \
        bool(opt_b.state_dict()["state"])  # schedulefree's train() makes empty entries
    loops.train(a, opt_a, 2, x, y)
    loops.train(b, opt_b, 2, x, y)
    groups_a, groups_b = opt_a.state_dict()["param_groups"], opt_b.state_dict()["param_groups"]
    # fused: the peer was made fused=True; maximize: a flag lion_pytorch does not have.
    peer_only = {"fused"} if loops.peer_class(name).__name__ in loops.FUSED_ON_CPU else set()
    peer_only |= {"maximize"} if name == "lion" else set()
    for ga, gb in zip(groups_a, groups_b):
        ours_only = {"state_dtype": None, "master_weights": False,
                     "stochastic_rounding": False, "kahan_summation": False, "seed": 0}
        assert {k: ga[k] for k in ours_only} == ours_only  # fusedopt's own, their defaults
        assert {k: v for k, v in ga.items() if k not in peer_only | set(ours_only)} == \
            {k: v for k, v in gb.items() if k not in peer_only}
    loops.assert_states_close(opt_a, opt_b)


#: Every case in both dtypes, but float64 for a peer that steps it in float32
#: (torch_loops.FOREIGN_STATE).
LOOP_CASES = [pytest.param(n, hp, d, id=f"{i}-{str(d)[6:]}") for d in DTYPES
              for (n, hp), i in zip(CASES, CASE_IDS)
              if not (n in loops.FOREIGN_STATE and d == torch.float64)]


@pytest.mark.parametrize("name, hp, dtype", LOOP_CASES)
def test_training_loop_matches_the_peer(name, hp, dtype):
    """Two independent loops from one seed agree to VS_TORCH_LOOP; in float32 a third
    model, stepped by the peer with the fused loop's own grads, to VS_TORCH_SHADOW."""
    a, b, c = loops.twins(dtype=dtype, n=3, bias=loops.biased(name))
    x, y = loops.data(dtype=dtype)
    opt_a, opt_b = loops.make(name, a.parameters(), hp, "fused"), \
        loops.make(name, b.parameters(), hp, "peer")
    shadow = None
    if dtype == torch.float32:
        shadow = (c, loops.make(name, c.parameters(), hp, "peer"))
    losses_a = loops.train(a, opt_a, STEPS, x, y, shadow=shadow)
    loops.train(b, opt_b, STEPS, x, y)
    assert losses_a[-1] < losses_a[0] or name == "lion"  # it trains (Lion's 1e-4 barely)
    loops.assert_close(a, b)
    if name not in loops.FOREIGN_STATE:
        loops.assert_states_close(opt_a, opt_b)
    if shadow is not None:
        loops.assert_close(a, c, VS_TORCH_SHADOW)
    assert loops.relative(next(a.parameters()).detach(),
                          next(loops.mlp(dtype=dtype, bias=loops.biased(name))
                               .parameters()).detach()) > 1e-3


def _scheduled(name, dtype):
    a, b = loops.twins(dtype=dtype)
    opts, schedulers = [], []
    for model, which in ((a, "fused"), (b, "peer")):
        if name == "adam":  # OneCycle changes lr and beta1 every step
            opt = loops.make(name, model.parameters(), dict(lr=1e-2), which)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)
        else:
            opt = loops.make(name, model.parameters(), dict(lr=0.1, momentum=0.9), which)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS // 2)
        opts.append(opt)
        schedulers.append(sched)
    return (a, b), opts, schedulers


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_an_lr_scheduler_drives_it_unchanged(name, dtype):
    (a, b), (opt_a, opt_b), (sched_a, sched_b) = _scheduled(name, dtype)
    x, y = loops.data(dtype=dtype)
    lrs = []
    for t in range(STEPS):
        loops.train(a, opt_a, 1, x, y, scheduler=sched_a)
        loops.train(b, opt_b, 1, x, y, scheduler=sched_b)
        lrs.append(opt_a.param_groups[0]["lr"])
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
        assert opt_a.param_groups[0].get("betas") == opt_b.param_groups[0].get("betas")
    assert len(set(lrs)) > STEPS // 2  # the rate really moved
    loops.assert_close(a, b)
    loops.assert_states_close(opt_a, opt_b)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "nadam"])
def test_two_param_groups_of_different_lr_and_weight_decay(name, dtype):
    a, b = loops.twins(dtype=dtype)
    x, y = loops.data(dtype=dtype)
    extra = dict(momentum=0.9) if name == "sgd" else {}
    lr = 0.002 if name in ("rmsprop", "nadam") else 0.02  # rates these train stably at
    opts = []
    for model, which in ((a, "fused"), (b, "peer")):
        first, *rest = list(model.children())
        groups = [{"params": first.parameters(), "lr": lr, "weight_decay": 0.1},
                  {"params": [p for m in rest for p in m.parameters()], "lr": lr / 10,
                   "weight_decay": 0.0}]
        opts.append(loops.make(name, groups, dict(lr=0.01, **extra), which))
    for model, opt in zip((a, b), opts):
        loops.train(model, opt, STEPS, x, y)
    assert [g["lr"] for g in opts[0].param_groups] == [lr, lr / 10]
    loops.assert_close(a, b)
    loops.assert_states_close(*opts)


@pytest.mark.parametrize("name", ["adam", "sgd", "adagrad"])
def test_grad_scaler_with_bf16_autocast_and_a_skipped_step(name):
    """torch.amp.GradScaler on the CPU, bf16 autocast, float32 params. The peer (torch's
    fused optimizer, with its own GradScaler) steps a twin with the same scaled grads: the
    same scale history and params; the poisoned step changes nothing."""
    a, c = loops.twins(n=2)
    x, y = loops.data()
    hp = dict(lr=1e-2, momentum=0.9) if name == "sgd" else dict(lr=1e-2)
    opt_a, opt_c = loops.make(name, a.parameters(), hp, "fused"), \
        loops.make(name, c.parameters(), hp, "peer")
    scaler_a, scaler_c = (torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=7)
                          for _ in range(2))
    shadow = (c, opt_c, scaler_c)
    poisoned = 10
    loops.train(a, opt_a, poisoned, x, y, scaler=scaler_a, autocast=True, shadow=shadow)
    scale = scaler_a.get_scale()
    params = [p.detach().clone() for p in a.parameters()]
    state = {i: {k: v.clone() for k, v in s.items()}
             for i, s in opt_a.state_dict()["state"].items()}
    loops.train(a, opt_a, 1, x, y, scaler=scaler_a, autocast=True, poison={poisoned},
                start=poisoned, shadow=shadow)
    assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), params))
    after = opt_a.state_dict()["state"]
    for i, saved in state.items():
        assert all(torch.equal(after[i][k], v) for k, v in saved.items()), i
    assert scaler_a.get_scale() == scaler_c.get_scale() == scale / 2
    history = []
    for t in range(poisoned + 1, STEPS):
        loops.train(a, opt_a, 1, x, y, scaler=scaler_a, autocast=True, start=t, shadow=shadow)
        history.append((scaler_a.get_scale(), scaler_c.get_scale()))
    assert all(s == t for s, t in history) and len({s for s, _ in history}) > 1
    loops.assert_close(a, c, VS_TORCH_SHADOW)
    loops.assert_states_close(opt_a, opt_c)


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_maximize_matches_the_peers(name):
    a, b = loops.twins(dtype=torch.float64)
    x, y = loops.data(dtype=torch.float64)
    hp = dict(lr=1e-3, maximize=True, **(dict(momentum=0.5) if name != "adam" else {}))
    opt_a, opt_b = loops.make(name, a.parameters(), hp, "fused"), \
        loops.make(name, b.parameters(), hp, "peer")
    losses = loops.train(a, opt_a, 20, x, y)
    loops.train(b, opt_b, 20, x, y)
    assert losses[-1] > losses[0]  # ascending
    loops.assert_close(a, b)


def test_params_without_grads_are_skipped_and_keep_their_step_count():
    a, b = loops.twins(dtype=torch.float64)
    x, y = loops.data(dtype=torch.float64)
    opt_a, opt_b = ft.Adam(a.parameters(), lr=1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    for model, opt in ((a, opt_a), (b, opt_b)):
        last = list(model.children())[-1]
        last.requires_grad_(False)          # no grads: not stepped, no state
        loops.train(model, opt, 5, x, y)
        last.requires_grad_(True)           # from now on stepped, from its own step 1
        loops.train(model, opt, 5, x, y)
    steps = {i: float(s["step"]) for i, s in opt_a.state_dict()["state"].items()}
    assert steps == {0: 10.0, 1: 10.0, 2: 10.0, 3: 10.0, 4: 5.0, 5: 5.0}
    loops.assert_close(a, b)
    loops.assert_states_close(opt_a, opt_b)
