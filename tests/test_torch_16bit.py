"""fusedopt.torch with bfloat16 and float16 params against torch.optim: the default state
dtypes (torch.optim's), 24 steps of a real loop within a derived ulp bound per step, a
torch.amp.GradScaler with a skipped step, and fp32 + bf16 params in one param group."""

import pytest
import torch
import torch16_runs as runs
import torch_loops as loops
from tolerances import VS_TORCH_SHADOW

import fusedopt.torch as ft
from fusedopt.backends.cpu import backend as cpu_backend

STEPS = 24
CASES, CASE_IDS = loops.cases()
DTYPE_IDS = lambda d: str(d)[6:]  # noqa: E731


#: No ulp comparison for these float16 peers: torch's default path rounds (1 - beta2) g^2
#: to float16 on its own, where it is 0 for the grads of this model (|g| below ~2e-3 at
#: alpha = 0.99, ~5e-3 at beta2 = 0.999), and adds eps in float16, where 1e-8 is 0: its
#: steps divide by zero (the test below). fusedopt keeps float32 state for float16 params
#: for this reason (fusedopt/memory/storage.py); its steps from the same inputs differ by design.
#: RAdam's peer does the same from its first rectified step (the sixth at beta2 = 0.999),
#: and schedulefree's AdamWScheduleFree from its first (its exp_avg_sq and eps, float16).
FP16_UNDERFLOWS = ("rmsprop", "nadam", "radam", "schedulefreeadamw")
#: Rprop's peer computes grad * prev in float16, where the products of this model's smallest
#: grads (|g| below ~2e-4) underflow to 0: it then sees no sign change there and keeps the
#: step size, where fusedopt (float32 math, float32 state for float16 params) shrinks it.
FP16_PRODUCT_UNDERFLOWS = ("rprop",)
#: Every case in bfloat16; float16 in each optimizer's first case (its storage shares the
#: bfloat16 runs' code but the bit layout, and each case is a compile of its own).
def _stepped(name: str, case_id: str, dtype) -> bool:
    if name in loops.MATRIX_ONLY:  # Muon: bfloat16 (with its state) only, as its dtypes say
        return dtype == torch.bfloat16
    return dtype != torch.float16 or (name not in FP16_UNDERFLOWS + FP16_PRODUCT_UNDERFLOWS
                                      and case_id.endswith("-0"))


STEP_CASES = [(n, hp, d) for (n, hp), i in zip(CASES, CASE_IDS) for d in runs.DTYPES
              if _stepped(n, i, d) and n not in loops.FOREIGN_STATE]
STEP_IDS = [f"{i}-{DTYPE_IDS(d)}" for (n, _), i in zip(CASES, CASE_IDS) for d in runs.DTYPES
            if _stepped(n, i, d) and n not in loops.FOREIGN_STATE]


@pytest.mark.parametrize("name, hp, dtype", STEP_CASES, ids=STEP_IDS)
def test_each_step_is_within_the_ulp_bound_of_the_peers(name, hp, dtype):
    """A real loop of 16-bit models: before each step fusedopt takes the peer's params and
    state, both step with the same grads, and each param and state tensor is within
    tolerances.TORCH_16BIT_ULPS of the peer's; over the run the params move."""
    if loops.refuses_16bit(name):
        return
    a, b = loops.twins(dtype=dtype, bias=loops.biased(name))
    start = [p.detach().clone() for p in a.parameters()]
    x, y = loops.data(dtype=dtype)
    opt, peer = runs.fused(name, a.parameters(), hp), runs.peer(name, b.parameters(), hp)
    worst = {}
    for t in range(STEPS):
        opt.zero_grad()
        peer.zero_grad()
        runs.loss_and_grads(a, x, y, twin=b)
        if t:
            runs.take_peer_values(opt, a, peer, b)
        opt.step()
        peer.step()
        for k, (p, q) in enumerate(zip(a.parameters(), b.parameters())):
            pairs = [("param", p, q)] + [(key, opt.state[p][key], v)
                                         for key, v in peer.state[q].items()
                                         if key not in ("step", *loops.DERIVED)]
            for what, ours, theirs in pairs:
                limit, absolute = runs.bound(name, hp, what)
                diff = runs.ulps(ours, theirs)
                top = float(runs.spacing(theirs.detach().abs().max().reshape(1))[0])
                assert diff <= limit + absolute / top, (t, k, what, diff)
                worst[what] = max(worst.get(what, 0.0), diff)
            if "step" in peer.state[q]:
                assert float(opt.state[p]["step"]) == float(peer.state[q]["step"])
    moved = max(float((p.detach().double() - s.double()).abs().max())
                for p, s in zip(a.parameters(), start))
    assert moved > 1e-3




@pytest.mark.parametrize("name", FP16_UNDERFLOWS)
def test_torch_fp16_defaults_overflow_where_ours_do_not(name):
    a, b = loops.twins(dtype=torch.float16)
    x, y = loops.data(dtype=torch.float16)
    opt, peer = runs.fused(name, a.parameters(), {}), runs.peer(name, b.parameters(), {})
    peer_finite = True
    for _ in range(8):
        runs.loss_and_grads(a, x, y, twin=b)
        opt.step()
        peer.step()
        peer_finite = peer_finite and all(bool(q.isfinite().all()) for q in b.parameters())
        assert all(bool(p.isfinite().all()) for p in a.parameters())
    assert not peer_finite


@pytest.mark.parametrize("dtype", runs.DTYPES, ids=DTYPE_IDS)
def test_torch_fused_sgd_skips_16bit_params(dtype):
    """Why SGD's 16-bit peer is its default path: torch 2.13's fused CPU SGD leaves the
    vectorized body of a 16-bit param as it was (only the tail is stepped). When this
    fails, torch has fixed it: make fused=True SGD the peer (torch16_runs.FUSED_16BIT)."""
    p = torch.nn.Parameter(torch.ones(64, dtype=dtype))
    opt = torch.optim.SGD([p], lr=0.05, fused=True)
    p.grad = torch.ones(64, dtype=dtype)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(64, dtype=dtype))
    q = torch.nn.Parameter(torch.ones(64, dtype=dtype))
    ours = ft.SGD([q], lr=0.05)
    q.grad = torch.ones(64, dtype=dtype)
    ours.step()
    assert torch.equal(q.detach(), torch.full((64,), 0.95).to(dtype))


@pytest.mark.parametrize("param_dtype, storage, want", [
    (torch.bfloat16, {}, torch.bfloat16),                       # torch.optim's: the param's
    (torch.float16, {}, torch.float32),                         # no float16 state
    (torch.float32, {}, torch.float32),
    (torch.float64, {}, torch.float64),
    (torch.bfloat16, dict(state_dtype="float32"), torch.float32),
    (torch.bfloat16, dict(state_dtype=torch.float32), torch.float32),
    (torch.float16, dict(state_dtype="bfloat16"), torch.bfloat16),
    (torch.float32, dict(state_dtype="bfloat16"), torch.bfloat16),
    (torch.bfloat16, dict(master_weights=True), torch.float32),  # a master keeps fp32 state
    (torch.bfloat16, dict(master_weights="remainder"), torch.float32),
], ids=lambda v: str(v).replace("torch.", ""))
def test_state_dtypes(param_dtype, storage, want):
    p = torch.nn.Parameter(torch.ones(5, dtype=param_dtype))
    opt = ft.AdamW([p], **storage)
    p.grad = torch.full((5,), 0.5, dtype=param_dtype)
    opt.step()
    assert {k: v.dtype for k, v in opt.state[p].items() if k != "step"} == \
        {"exp_avg": want, "exp_avg_sq": want,
         **({"master": torch.float32} if storage.get("master_weights") is True else {}),
         **({"remainder": torch.int16} if storage.get("master_weights") == "remainder"
            else {})}
    peer_p = torch.nn.Parameter(torch.ones(5, dtype=param_dtype))
    peer = torch.optim.AdamW([peer_p])
    peer_p.grad = p.grad.clone()
    peer.step()
    if not storage and param_dtype != torch.float16:  # the drop-in default: torch's dtypes
        assert peer.state[peer_p]["exp_avg"].dtype == want


@pytest.mark.parametrize("name, dtype", [("adam", torch.bfloat16), ("adam", torch.float16),
                                         ("sgd", torch.bfloat16)],
                         ids=["adam-bfloat16", "adam-float16", "sgd-bfloat16"])
def test_grad_scaler_with_16bit_params_and_a_skipped_step(name, dtype):
    """torch.amp.GradScaler("cpu") over a 16-bit model; the peer (its own scaler) steps a
    twin with the same scaled grads. (No float16 SGD peer: GradScaler refuses to unscale
    float16 grads for torch's default path, and its fused SGD skips 16-bit params.) The poisoned step changes no param, state or step; the
    scales agree throughout; params stay within the per-step bound of the peer's."""
    a, b = loops.twins(dtype=dtype, bias=loops.biased(name))
    x, y = loops.data(dtype=dtype)
    hp = dict(lr=1e-2, momentum=0.9) if name == "sgd" else dict(lr=1e-2)
    opt, peer = runs.fused(name, a.parameters(), hp), runs.peer(name, b.parameters(), hp)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=5)
               for _ in range(2)]
    poisoned, skipped = 7, 0
    for t in range(STEPS):
        opt.zero_grad()
        peer.zero_grad()
        if t:
            runs.take_peer_values(opt, a, peer, b)
        loss = torch.nn.functional.cross_entropy(a(x), y)
        scalers[0].scale(loss).backward()
        if t == poisoned:
            next(a.parameters()).grad[0, 0] = float("inf")
        for p, q in zip(a.parameters(), b.parameters()):
            q.grad = p.grad.clone()
        scalers[1].scale(loss.detach())
        before = ([p.detach().clone() for p in a.parameters()],
                  {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()})
        for o, scaler in ((opt, scalers[0]), (peer, scalers[1])):
            scaler.step(o)
            scaler.update()
        assert scalers[0].get_scale() == scalers[1].get_scale()
        if t == poisoned:
            skipped += 1
            assert all(torch.equal(p.detach(), q) for p, q in zip(a.parameters(), before[0]))
            for p, s in opt.state.items():
                assert all(torch.equal(v, before[1][id(p)][k]) for k, v in s.items())
            continue
        for p, q in zip(a.parameters(), b.parameters()):
            limit, _ = runs.bound(name, hp, "param")
            assert runs.ulps(p, q) <= limit, (t, runs.ulps(p, q))
    assert skipped == 1 and scalers[0].get_scale() != 2.0**10


def test_fp32_and_bf16_params_in_one_group_take_one_launch_each(monkeypatch):
    """One param group holding float32 and bfloat16 params: two launches (one per dtype),
    each stepped as its peer (torch's fused Adam) steps it."""
    torch.manual_seed(0)
    shapes = [(33, 7), (7,), (5, 5), (101,)]
    dtypes = [torch.float32, torch.bfloat16, torch.bfloat16, torch.float32]
    init = [torch.randn(s).to(d) for s, d in zip(shapes, dtypes)]
    ours = [torch.nn.Parameter(v.clone()) for v in init]
    theirs = [torch.nn.Parameter(v.clone()) for v in init]
    opt = ft.Adam(ours, lr=1e-2)
    peer = torch.optim.Adam(theirs, lr=1e-2, fused=True)
    launches = []
    real_launch = cpu_backend.Launcher.__call__

    def counted(self, grads, *args, **kw):  # every elementwise CPU step's one loop call
        launches[-1].append((self.group.storage.param, len(grads)))
        return real_launch(self, grads, *args, **kw)

    monkeypatch.setattr(cpu_backend.Launcher, "__call__", counted)
    for t in range(STEPS):
        grads = [torch.randn(s).to(d) for s, d in zip(shapes, dtypes)]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        launches.append([])
        opt.step()
        peer.step()
        for p, q in zip(ours, theirs):
            if p.dtype == torch.float32:
                assert loops.relative(p, q) <= VS_TORCH_SHADOW
            else:
                assert runs.ulps(p, q) <= runs.bound("adam", {}, "param")[0]
    assert all(sorted(step) == [("bfloat16", 2), ("float32", 2)] for step in launches)
