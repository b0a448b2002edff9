"""Adafactor against torch.optim.Adafactor in a real autograd loop (2-D weights, 1-D biases
and a 3-D param), every backend against the float64 oracle on factored shapes, torch's
checkpoints both ways, and the refusals: the factored second moment's row and column
sums are the engine's factor phase (fusedopt/engine/reductions.py)."""

import numpy as np
import pytest
import reference
import torch
from cases import problem
from tolerances import VS_REFERENCE

import fusedopt
import fusedopt.torch
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.memory.factored import slot_shape

STEPS = 50
#: max |fusedopt - torch| over max |torch|, per param, after 50 steps in float32.
RELATIVE = 1e-6

#: torch's defaults, then two non-default sets: every argument moved; the update clip d
#: and a floor eps2 that bind on some steps, decay on, maximize in the last.
SETTINGS = [dict(),
            dict(lr=0.05, beta2_decay=-0.6, eps=(1e-6, 1e-2), d=1.5, weight_decay=0.1),
            dict(lr=0.02, beta2_decay=-0.9, eps=(1e-10, 1e-1), d=1.0, weight_decay=0.01,
                 maximize=True)]


class Net(torch.nn.Module):
    """Two linear layers (2-D weights, 1-D biases) and a 3-D param (two 3 x 8 slices)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)
        self.w3 = torch.nn.Parameter(torch.randn(2, 3, 8) * 0.1)

    def forward(self, x):
        mixed = (x.view(-1, 1, 1, 8) * self.w3).sum((1, 2, 3)).unsqueeze(1)
        return self.l2(torch.tanh(self.l1(x))) + mixed


def _train(make, steps=STEPS, sign=1.0):
    net = Net()
    opt = make(net.parameters())
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    y = torch.sin(x.sum(dim=1, keepdim=True))
    for _ in range(steps):
        opt.zero_grad()
        (sign * torch.nn.functional.mse_loss(net(x), y)).backward()
        opt.step()
    return net, opt


def _relative(a, b) -> float:
    worst = float((a - b).abs().max()) if a.numel() else 0.0
    return worst / float(b.abs().max()) if worst else 0.0


@pytest.mark.parametrize("hp", SETTINGS, ids=["defaults", "every-argument", "maximize"])
def test_matches_torch_in_an_autograd_loop(hp):
    sign = -1.0 if hp.get("maximize") else 1.0
    ours, opt = _train(lambda p: fusedopt.torch.Adafactor(p, **hp), sign=sign)
    theirs, peer = _train(lambda p: torch.optim.Adafactor(p, **hp), sign=sign)
    start = Net()
    for (name, a), b, s in zip(ours.named_parameters(), theirs.parameters(),
                               start.parameters()):
        assert _relative(a.detach(), b.detach()) <= RELATIVE, name
        assert _relative(b.detach(), s.detach()) > 1e-3, name  # the loop moved it
        mine, torchs = opt.state[a], peer.state[b]
        assert sorted(mine) == sorted(torchs), name  # the keys torch keeps at this rank
        for key in torchs:
            assert mine[key].shape == torchs[key].shape, (name, key)
            assert _relative(mine[key], torchs[key]) <= 10 * RELATIVE, (name, key)


def test_checkpoints_interchange_with_torch():
    hp = dict(lr=0.05, weight_decay=0.1)
    ours, opt = _train(lambda p: fusedopt.torch.Adafactor(p, **hp), steps=5)
    theirs, peer = _train(lambda p: torch.optim.Adafactor(p, **hp), steps=5)
    into_ours = fusedopt.torch.Adafactor(theirs.parameters(), **hp)
    into_ours.load_state_dict(peer.state_dict())
    into_torch = torch.optim.Adafactor(ours.parameters(), **hp)
    into_torch.load_state_dict(opt.state_dict())
    for a, b in ((into_ours, peer), (into_torch, opt)):
        for p, q in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
            assert sorted(a.state[p]) == sorted(b.state[q])
            for key, value in b.state[q].items():
                torch.testing.assert_close(a.state[p][key], value, rtol=0, atol=0)
    # both continue from the exchanged state alike
    x = torch.randn(16, 8)
    for model, first, second in ((theirs, into_ours, peer), ):
        twin = Net()
        twin.load_state_dict(model.state_dict())
        other = torch.optim.Adafactor(twin.parameters(), **hp)
        other.load_state_dict(second.state_dict())
        for net, o in ((model, first), (twin, other)):
            o.zero_grad()
            net(x).square().mean().backward()
            o.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            assert _relative(a.detach(), b.detach()) <= RELATIVE


def _run(backend, shapes, hp, convention, dtype=np.float32, steps=10):
    """``steps`` steps of params of ``shapes``, all in one call per step."""
    spec = REGISTRY["adafactor"]
    flags = spec.flags({**spec.defaults(), **hp}, convention)
    problems = [problem(shape, steps, dtype=dtype, seed=i) for i, shape in enumerate(shapes)]
    problems = [(np.array(p), [np.array(g) for g in grads]) for p, grads in problems]
    params = [p.copy() for p, _ in problems]
    states = [[np.zeros(slot_shape(kind, p.shape), dtype) for kind in spec.slot_shapes(flags)]
              for p in params]
    for t in range(steps):
        fusedopt.functional.update("adafactor", params, [g[t] for _, g in problems], states,
                                   step=t + 1, convention=convention, backend=backend, **hp)
    expected = []
    for p, grads in problems:
        state, q = {}, p.astype(np.float64)
        for t, g in enumerate(grads, start=1):
            q = reference.adafactor(q, g.astype(np.float64), state, t,
                                    {**spec.defaults(), **hp}, convention)
        expected.append(q)
    return params, expected


SHAPES = [(3, 5, 7), (1, 1), (64, 1), (1, 300), (37, 53), (4097,), (), (2, 0, 3)]


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_every_backend_matches_the_oracle_many_shapes_in_one_call(backend, convention):
    from cases import cases
    for hp in cases("adafactor", convention):
        got, expected = _run(backend, SHAPES, hp, convention)
        for shape, a, b in zip(SHAPES, got, expected):
            np.testing.assert_allclose(a, b, **VS_REFERENCE[np.float32], err_msg=str(shape))


def test_float64_three_dimensional_matches_the_oracle():
    got, expected = _run("cpu", [(3, 40, 50), (7,)], dict(learning_rate=0.05,
                         weight_decay=0.1), "torch", dtype=np.float64)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, **VS_REFERENCE[np.float64])


def test_row_and_column_sums_do_not_depend_on_threads_or_blocks(monkeypatch):
    """The factor pass adds blocks of rows in their order: a block size of one row (many
    partial sums) and the default give the same bits."""
    from fusedopt import config
    from fusedopt.backends.cpu import factored
    shapes = [(300, 70), (5, 6, 7)]
    first, _ = _run("cpu", shapes, dict(learning_rate=0.05), "torch")
    monkeypatch.setattr(config, "CPU_FACTOR_BLOCK", 1)
    factored._kernels.cache_clear()
    second, _ = _run("cpu", shapes, dict(learning_rate=0.05), "torch")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_the_keras_style_class_steps_factored_and_full_params():
    opt = fusedopt.Adafactor(learning_rate=0.05, weight_decay=0.1)
    w, b = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    for _ in range(3):
        opt.apply_gradients([(np.full((4, 3), 0.5, np.float32), w),
                             (np.array([1.0, -2.0, 0.0], np.float32), b)])
    state = {k: v.shape for k, v in opt._engine.state(0).items()}
    assert state == {"r": (4, 1), "c": (1, 3), "v": (0,)}
    assert opt._engine.state(1)["v"].shape == (3,)
    assert (w < 1).all() and b[0] < 1 < b[1]


def test_a_saved_optimizer_continues_bit_for_bit(tmp_path):
    """fusedopt's own checkpoint (fusedopt/checkpoint.py) holds the factors in their shapes."""
    def grads(w, b):
        return [(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), w),
                (np.array([1.0, 2.0, 3.0], np.float32), b)]
    w, b = np.ones((4, 3), np.float32), np.ones(3, np.float32)
    opt = fusedopt.Adafactor(learning_rate=0.05, weight_decay=0.1)
    opt.apply_gradients(grads(w, b))
    opt.save(tmp_path / "adafactor.npz")
    w2, b2 = w.copy(), b.copy()
    again = fusedopt.load(tmp_path / "adafactor.npz", [w2, b2])
    for _ in range(3):
        opt.apply_gradients(grads(w, b))
        again.apply_gradients(grads(w2, b2))
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(b, b2)
    assert again._engine.state(0)["r"].shape == (4, 1)


def test_refusals_name_the_argument_and_change_nothing():
    with pytest.raises(ValueError, match="beta2_decay"):
        fusedopt.torch.Adafactor([torch.nn.Parameter(torch.ones(2, 2))], beta2_decay=0.5)
    with pytest.raises(ValueError, match="clip_threshold"):
        fusedopt.Adafactor(clip_threshold=0.0)
    with pytest.raises(TypeError, match="bfloat16.*convert it"):
        fusedopt.torch.Adafactor([torch.nn.Parameter(torch.ones(3, 3, dtype=torch.bfloat16))])
    with pytest.raises(TypeError, match="real"):
        fusedopt.torch.Adafactor([torch.nn.Parameter(torch.ones(3, 3, dtype=torch.complex64))])
    p = torch.nn.Parameter(torch.ones(3, 4).t())  # transposed: rows are not its last dim
    p.grad = torch.ones(4, 3)
    opt = fusedopt.torch.Adafactor([p])
    with pytest.raises(ValueError, match="contiguous"):
        opt.step()
    assert (p == 1).all()
    with pytest.raises(ValueError, match="C-contiguous"):
        fusedopt.Adafactor().apply_gradients([(np.ones((3, 4), np.float32),
                                               np.ones((4, 3), np.float32).T)])


def test_a_backend_without_the_factor_phase_is_refused_and_nothing_changes():
    """The engine refuses a backend without the factor phase with the fix before anything
    changes (CUDA has one: tests/test_cuda_adafactor.py)."""
    from fusedopt.engine.reductions import factor_phase
    opt = fusedopt.Adafactor()
    p = np.ones((2, 3), np.float32)
    opt.apply_gradients([(np.ones((2, 3), np.float32), p)])
    before = [s.copy() for s in opt._engine.states[0]] + [p.copy()]

    class NoFactors:
        name = "elsewhere"

    plan = type("Plan", (), {"backend": NoFactors})()
    with pytest.raises(ValueError, match="factored second moments.*backend='cpu'"):
        factor_phase(opt._engine, plan, (0,), [(None, [p])], [None], {})
    for a, b in zip(opt._engine.states[0] + [p], before):
        np.testing.assert_array_equal(a, b)


FRESH_PROCESS_STEP = """
import numpy as np, fusedopt
from fusedopt.backends.cpu import factored
ps = [np.ones((64, 32), np.float32), np.ones(100, np.float32)]
fusedopt.Adafactor().apply_gradients([(np.full_like(p, 0.1), p) for p in ps])
passes = (factored._factor_sums, factored._reduce_pass, factored._element_pass)
print(sum(sum(d.stats.cache_hits.values()) for d in passes),
      sum(sum(d.stats.cache_misses.values()) for d in passes))
"""


def test_the_factored_passes_load_from_numbas_cache_in_a_new_process():
    """The factored passes are compiled once per variant and kept on disk, as the element
    loop is: a second process loads them (it compiled them in 9 s at every start when they
    were closures)."""
    import subprocess
    import sys

    from fusedopt.backends.cpu import _cache
    if not _cache.JIT_OPTIONS["cache"]:
        pytest.skip("no writable Numba cache here")
    for _ in range(2):  # the first run may compile and save; the second must only load
        out = subprocess.run([sys.executable, "-c", FRESH_PROCESS_STEP], capture_output=True,
                             text=True, check=True)
    hits, misses = map(int, out.stdout.split())
    assert misses == 0 and hits >= 2, out.stdout  # factor sums, element pass (no reduction)
