"""A real autograd training loop, shared by the fusedopt.torch tests: a small MLP on synthetic
classification data, cross-entropy, fusedopt.torch.X against its peer (torch.optim.X, fused
where torch has a fused CPU kernel; lion_pytorch.Lion for Lion) from the same seed."""

from __future__ import annotations

import importlib

import torch
from tolerances import VS_TORCH_LOOP, VS_TORCH_LOOP_STATE, VS_TORCH_SHADOW

import fusedopt.torch as ft
from fusedopt.torch._names import ROWS

FEATURES, HIDDEN, CLASSES, SAMPLES = 12, 32, 5, 128

#: Rows whose peer keeps its state in a layout of its own, so that only params compare with
#: it: bitsandbytes' AdEMAMix keeps m1 and m2 stacked in one ``state1`` (``step`` an int) and
#: does its 32-bit math and state in float32 for every param dtype (a float64 param is
#: stepped in float32, a 16-bit one keeps float32 state). No checkpoint interchange either:
#: tests/test_ademamix.py compares the moments with the stacked ones.
FOREIGN_STATE = frozenset({"ademamix"})

#: Rows that step 2-D params only (Muon, as torch.optim.Muon): their loops train a model
#: without biases, and they keep plain storage (no masters, no float16 params).
MATRIX_ONLY = frozenset(name for name, row in ROWS.items() if row.name == "Muon")


def biased(name: str) -> bool:
    """Whether ``name``'s loops train the model with biases (not Muon's: 2-D only)."""
    return name not in MATRIX_ONLY

#: The 0-d state entries fusedopt derives from the step (fusedopt/algorithms/spec.py).
DERIVED = {d.key for row in ROWS.values() for d in row.derived}

#: torch.optim classes with a fused CPU kernel in torch 2.13 (the others refuse fused=True).
FUSED_ON_CPU = {"Adam", "AdamW", "SGD", "Adagrad"}

#: Per optimizer: torch's defaults, and a setting that turns its options on (torch names).
SETTINGS = {
    "adam": [{}, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True),
             dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)],
    "adamw": [{}, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)],
    "sgd": [dict(lr=0.05), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            dict(lr=0.05, momentum=0.8, dampening=0.3)],
    "rmsprop": [{}, dict(lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-3)],
    "adagrad": [{}, dict(lr=0.05, lr_decay=1e-2, initial_accumulator_value=0.1,
                         weight_decay=1e-3)],
    "adadelta": [{}, dict(lr=0.5, rho=0.8, weight_decay=1e-3)],
    "adamax": [{}, dict(lr=1e-2, weight_decay=1e-3)],
    "nadam": [{}, dict(momentum_decay=1e-2, weight_decay=1e-2),
              dict(weight_decay=0.1, decoupled_weight_decay=True)],
    "lion": [{}, dict(lr=1e-3, betas=(0.95, 0.98), weight_decay=0.1)],
    "rprop": [{}, dict(lr=3e-3, etas=(0.3, 1.5), step_sizes=(1e-4, 0.05))],
    "asgd": [{}, dict(lr=0.05, lambd=1e-2, alpha=0.5, t0=5, weight_decay=1e-3)],
    "lamb": [{}, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1)],
    "stableadamw": [{}, dict(lr=1e-2, betas=(0.8, 0.9), eps=1e-4, weight_decay=0.1),
                    dict(lr=1e-2, weight_decay=0.05, decouple_lr=True, max_lr=0.02)],
    "adan": [{}, dict(lr=1e-2, betas=(0.9, 0.85, 0.995), eps=1e-7, weight_decay=0.05),
             dict(lr=1e-2, weight_decay=0.01, decouple_lr=True, max_lr=0.02, adam_wd=True)],
}


def cases():
    """(registry name, torch settings) for every row and setting, and their ids."""
    settings = {name: SETTINGS.get(name, [{}]) for name in ROWS}  # a new row: torch's defaults
    found = [(name, hp) for name in ROWS for hp in settings[name]]
    return found, [f"{ROWS[n].name}-{i}" for n in ROWS for i, _ in enumerate(settings[n])]


def data(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    w = torch.randn(FEATURES, CLASSES, generator=g)
    y = (x @ w + 0.3 * torch.randn(SAMPLES, CLASSES, generator=g)).argmax(1)
    return x.to(dtype), y


def mlp(seed: int = 0, dtype=torch.float32, bias: bool = True) -> torch.nn.Module:
    """``bias=False``: 2-D weights only (Muon's params)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, HIDDEN, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(HIDDEN, HIDDEN, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(HIDDEN, CLASSES, bias=bias)).to(dtype)


def twins(seed: int = 0, dtype=torch.float32, n: int = 2, bias: bool = True):
    models = [mlp(seed + k, dtype, bias) for k in range(n)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    return models


def tolerance(model, table=VS_TORCH_LOOP) -> float:
    return table[str(next(model.parameters()).dtype).replace("torch.", "")]


#: Rows whose real peer keeps another state layout than torch.optim's, which these tests
#: check: optimi's StableAdamW and Adan keep their step in the param group (and
#: ``kahan_comp`` per param, StableAdamW ``eps_sq`` too), and take no default lr. Here they
#: run against tests/torch_peers.py (the peer's formulas, torch.optim's layout); each one's
#: own test holds fusedopt to the real peer (tests/test_stableadamw.py, tests/test_adan.py).
OTHER_LAYOUT = {"stableadamw", "adan"}


def peer_class(name: str, real: bool = False):
    """The peer of ``name``'s row, or (``real`` False) for a row in :data:`OTHER_LAYOUT`
    the one of tests/torch_peers.py; where no library has one (an empty ``peer``), the
    class of tests/torch_peers.py written from the paper."""
    if not ROWS[name].peer or (name in OTHER_LAYOUT and not real):
        import torch_peers
        return getattr(torch_peers, ROWS[name].name)
    module, cls = ROWS[name].peer.split(":")
    return getattr(importlib.import_module(module), cls)


def make(name: str, params, hp: dict, which: str):
    """fusedopt's class ("fused") or the peer ("peer") for registered ``name``."""
    if which == "fused":
        return training(ft.CLASSES[name](params, **hp))
    cls = peer_class(name)
    extra = dict(fused=True) if cls.__name__ in FUSED_ON_CPU and name != "lion" else {}
    return training(cls(params, **hp, **extra))


def training(opt):
    """``opt`` in train mode: the schedule-free optimizers start in eval mode (their
    params hold the point to evaluate) and refuse to step there."""
    if callable(getattr(opt, "train", None)):
        opt.train()
    return opt


def train(model, opt, steps: int, x, y, *, scheduler=None, scaler=None, autocast=False,
          poison=(), start: int = 0, shadow=None) -> list:
    """``steps`` full-batch steps; ``poison``: steps (counted from 0 at ``start``) whose
    first grad gets an inf before the step (a GradScaler step to skip). ``shadow``: (model,
    optimizer[, scaler]) stepped in lockstep with a copy of this loop's grads, so that the
    two differ by their optimizers' arithmetic alone. Returns the losses."""
    losses = []
    for t in range(start, start + steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if t in poison:
            next(model.parameters()).grad[0, 0] = float("inf")
        pairs = [(opt, scaler)]
        if shadow is not None:
            twin, twin_opt, *twin_scaler = shadow
            for p, q in zip(model.parameters(), twin.parameters()):
                q.grad = None if p.grad is None else p.grad.clone()
            twin_scaler = twin_scaler[0] if twin_scaler else None
            if twin_scaler is not None:
                twin_scaler.scale(loss.detach())  # its scale is made on first use, as ours
            pairs.append((twin_opt, twin_scaler))
        for o, sc in pairs:
            if sc is None:
                o.step()
            else:
                sc.step(o)
                sc.update()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b|: the relative difference of a tensor."""
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / (scale if scale else 1.0)


def assert_close(model_a, model_b, rtol: float | None = None) -> None:
    """Every param of ``model_a`` within ``rtol`` (default: the dtype's VS_TORCH_LOOP) of
    ``model_b``'s."""
    rtol = tolerance(model_b) if rtol is None else rtol
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        diff = relative(a.detach(), b.detach())
        assert diff <= rtol, f"{name}: relative difference {diff:.3g} > {rtol:g}"


def assert_states_close(opt_a, opt_b, rtol: float | None = None) -> None:
    """The two state dicts have the same params, keys and steps, and close tensors."""
    if rtol is None:
        dtype = opt_b.param_groups[0]["params"][0].dtype
        rtol = VS_TORCH_LOOP_STATE[str(dtype).replace("torch.", "")]
    a, b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys(), (i, sorted(a[i]), sorted(b[i]))
        for key in a[i]:
            x, y = torch.as_tensor(a[i][key]), torch.as_tensor(b[i][key])
            # torch's load_state_dict casts the 0-d entries it carries from step to step
            # (NAdam's mu_product, ASGD's eta and mu) to the param's dtype (not step):
            # torch.optim.NAdam itself carries a float64 one after a float64 model reloads.
            same_dtype = x.dtype == y.dtype or key in DERIVED
            assert x.shape == y.shape and same_dtype, (i, key, x.dtype, y.dtype)
            if key == "step":
                assert float(x) == float(y), (i, float(x), float(y))
            else:  # derived: torch's own are float32 unless reloaded (see above)
                limit = max(rtol, VS_TORCH_SHADOW) if key in DERIVED else rtol
                diff = relative(x.double(), y.double())
                assert diff <= limit, (i, key, diff)


def refuses_16bit(name: str) -> bool:
    """Whether optimizer ``name`` takes no 16-bit params (Adafactor: its factored moments
    are kept in the param's dtype, float32 or float64); if so, fusedopt.torch's refusal of
    a bfloat16 param, naming the dtypes it takes, is asserted here."""
    import pytest

    from fusedopt.algorithms.registry import REGISTRY
    if "bfloat16" in REGISTRY[name].dtypes:
        return False
    p = torch.nn.Parameter(torch.ones(4, 8, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    with pytest.raises(TypeError, match="float32, float64 params"):
        ft.CLASSES[name]([p]).step()
    return True
