"""The plain step (fusedopt/engine/plain.py) gives the full step's bits: the same sequence of
fusedopt.torch steps, with the plain step and with every step forced through the full one
(``config.PLAIN_STEP`` False), leaves the same params and state, byte for byte. The
sequence changes between steps what the full step reads: the hyperparameters (lr by a
scheduler and by hand, betas or momentum), which params have grads, torch's thread count,
the grads' memory and layout, maximize. An engine over NumPy arrays adds clipping by value
and a param without weight decay."""

import numba
import pytest
import torch

import fusedopt.torch as ft
from fusedopt import config
from fusedopt.engine.plain import PlainSteps
from fusedopt.engine.step import StepPhases

CASES = {
    "adam": (ft.Adam, {}),
    "adamw maximize": (ft.AdamW, {"maximize": True, "weight_decay": 0.1}),
    "nadam": (ft.NAdam, {}),
    "sgd momentum": (ft.SGD, {"momentum": 0.9, "weight_decay": 0.01}),
}
STEPS = 12


def _counted(monkeypatch, cls, name: str) -> list:
    """Calls of ``cls.name`` from now on, one entry each."""
    calls, real = [], getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


def _run(make, extra, monkeypatch, plain: bool) -> tuple[list, int, int]:
    """(every param and state tensor's bytes after the sequence, full steps taken, plain
    steps that found their launches anew)."""
    monkeypatch.setattr(config, "PLAIN_STEP", plain)
    full = _counted(monkeypatch, StepPhases, "step")
    kept = _counted(monkeypatch, PlainSteps, "_keep")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1024, generator=gen, requires_grad=True)
    b = torch.randn(7, 13, generator=gen, requires_grad=True)
    c = torch.randn(300, generator=gen, requires_grad=True)
    opt = make([{"params": [a, b]}, {"params": [c], "lr": 0.02}], lr=0.01, **extra)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    threads = torch.get_num_threads()
    try:
        for k in range(STEPS):
            for p in (a, b, c):
                p.grad = torch.randn(p.shape, generator=gen)
            if k == 2:  # the grads' memory kept, their values written in place
                for p in (a, b, c):
                    p.grad = torch.zeros_like(p)
                    p.grad.copy_(torch.randn(p.shape, generator=gen))
            if k in (4, 5):
                b.grad = None  # a param without a grad: stepped one step less
            if k == 6:
                key = "momentum" if "momentum" in opt.param_groups[1] else "betas"
                opt.param_groups[1][key] = 0.8 if key == "momentum" else (0.8, 0.95)
            if k == 7:
                torch.set_num_threads(1 if threads > 1 else 2)
            if k == 8:
                opt.param_groups[1]["maximize"] = not opt.param_groups[1]["maximize"]
            if k == 9:
                torch.set_num_threads(threads)
                opt.param_groups[0]["lr"] *= 3
            if k == 10:  # a transposed grad: the full checks, then a contiguous copy
                b.grad = torch.randn(13, 7, generator=gen).t()
            opt.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    tensors = [a, b, c] + [v for p in (a, b, c) for v in opt.state[p].values()
                           if isinstance(v, torch.Tensor)]
    return [t.detach().numpy().tobytes() for t in tensors], len(full), len(kept)


@pytest.mark.parametrize("case", CASES)
def test_plain_and_full_steps_give_the_same_bits(case, monkeypatch):
    # Work items of 256 elements: the 1024-element param is 4 of them, so a step may run
    # on Numba's pool, and the thread count changed between steps changes how.
    monkeypatch.setattr(config, "CPU_CHUNK", 256)
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 0)
    before = numba.get_num_threads()
    make, extra = CASES[case]
    try:
        plain, full_steps, found = _run(make, extra, monkeypatch, plain=True)
        forced, all_full, _ = _run(make, extra, monkeypatch, plain=False)
    finally:
        numba.set_num_threads(before)
    assert all_full == STEPS
    # Full steps: the first of each set of positions (all three; without b) and none else.
    assert full_steps == 2, full_steps
    # The others found their launches anew after a change (b back, a new lr, betas or
    # momentum, maximize, b's grad transposed), else launched those kept.
    assert 0 < found < STEPS - full_steps, found
    assert len(plain) == len(forced)
    for i, (x, y) in enumerate(zip(plain, forced)):
        assert x == y, f"tensor {i} differs"


def _engine_run(monkeypatch, plain: bool) -> list:
    """An engine over NumPy arrays (Keras' convention, one step count): clipping by value,
    two hyperparameter groups, a param without weight decay, a step over some of the
    params, a hyperparameter changed; every array's bytes after the sequence."""
    import numpy as np

    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.engine.clip import Clipping
    from fusedopt.engine.engine import Engine

    monkeypatch.setattr(config, "PLAIN_STEP", plain)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in (1000, 37, 300)]
    engine = Engine(REGISTRY["adamw"], "keras", backend="cpu", clipping=Clipping(clipvalue=0.5))
    engine.add_params(params[:2], engine.add_group(dict(learning_rate=0.01, weight_decay=0.1)),
                      decays=[True, False])
    engine.add_params(params[2:], engine.add_group(dict(learning_rate=0.02)))
    for k in range(8):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        if k == 4:
            engine.step(grads[:2], [0, 1])
            continue
        if k == 5:
            engine.set_hyper(1, dict(learning_rate=0.03, beta_1=0.8))
        engine.step(grads)
    return [a.tobytes() for p, states in zip(params, engine.states) for a in (p, *states)]


def test_an_engine_with_value_clipping_gives_the_same_bits(monkeypatch):
    found = _counted(monkeypatch, PlainSteps, "_keep")
    plain = _engine_run(monkeypatch, plain=True)
    assert len(found) > 0  # plain steps were taken, with clipping by value
    assert plain == _engine_run(monkeypatch, plain=False)
