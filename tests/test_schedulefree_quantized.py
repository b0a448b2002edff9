"""Schedule-free AdamW and SGD with quantized state (``state_dtype="q8"``/``"q4"``).

Only the second moment v is quantized (the unsigned map, as Adam's v); z, the point the
train/eval switch reads as its grad, and the y that eval keeps stay float32
(``Slot.float_state``). So:

- a quantized step is the float32 step on the decoded state, then v quantized again: the
  param and z bit for bit, v's codes those of the host quantizer (CPU and unfused
  backends, both conventions); SGD's only slot is z, so its q8 run is its float32 run;
- eval() then train() gives y back bit for bit and touches no state; a checkpoint taken in
  eval mode (safetensors file, state_dict, torch's state_dict) resumes bit for bit, and
  one that does not fit is refused, changing nothing;
- the doors agree: functional, FlatParams, the torch and Keras doors step as the class;
- fusedopt.torch's q8 AdamWScheduleFree in a training loop stays within the bound that
  v's quantization error allows of the schedulefree package's (float32 state);
- the state's bytes per param, measured from the arrays held (the README's table).

(tests/test_quantized_state.py checks the same steps against the float64 reference.)
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

import fusedopt
from fusedopt import checkpoint, config, functional
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.engine import Engine
from fusedopt.memory import quant
from test_schedulefree import checkpoint_in_eval_mode

torch = pytest.importorskip("torch")

FORMATS = ("q8", "q4")
HP = dict(learning_rate=0.02, warmup_steps=3, weight_decay=0.1)
N = 5000  # above min_quantized_size: quantized


def _grads(steps, n=N, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0], n)).astype(np.float32)
            for _ in range(steps)]


def _engine(name, fmt, convention, backend, param):
    engine = Engine(REGISTRY[name], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=0)
    engine.add_group(HP)
    engine.add_params([param])
    return engine


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_quantized_step_is_the_float32_step_on_decoded_state(fmt, convention, backend):
    """Each step, a float32 engine is given the q8 engine's param, z and decoded v and
    stepped with the same grad: the param and z agree bit for bit, and v's codes and
    scales are the host quantizer's (fusedopt/memory/quant.py) of the float32 v. The param
    spans three of the CPU backend's chunks (spans that start past element 0, the last one
    ending inside a block)."""
    n = 2 * config.CPU_CHUNK + 300
    w = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    ours = _engine("schedulefreeadamw", fmt, convention, backend, w)
    assert [a.dtype for a in ours.states[0]] == [np.float32, np.uint8]
    for t, g in enumerate(_grads(4, n), 1):
        z, v = ours.states[0]
        plain_w = w.copy()
        plain = _engine("schedulefreeadamw", "float32", convention, backend, plain_w)
        plain.states[0][0][...] = z
        plain.states[0][1][...] = quant.dequantize(v, n, fmt, signed=False)
        plain.iterations, plain.steps[0] = t - 1, t - 1
        plain.hypers[0].running = ours.hypers[0].running and dict(ours.hypers[0].running)
        ours.step([g.copy()])
        plain.step([g.copy()])
        np.testing.assert_array_equal(w, plain_w, err_msg=f"step {t}: param")
        np.testing.assert_array_equal(ours.states[0][0], plain.states[0][0],
                                      err_msg=f"step {t}: z")
        expected = quant.quantize(plain.states[0][1], fmt, signed=False)
        np.testing.assert_array_equal(ours.states[0][1], expected, err_msg=f"step {t}: v")


@pytest.mark.parametrize("fmt", FORMATS)
def test_sgd_keeps_float32_state_and_steps_as_float32(fmt):
    a, b = (np.random.default_rng(2).standard_normal(N).astype(np.float32) for _ in range(2))
    ours = fusedopt.ScheduleFreeSGD(**HP, state_dtype=fmt)
    plain = fusedopt.ScheduleFreeSGD(**HP)
    for g in _grads(5):
        ours.apply_gradients([(g.copy(), a)])
        plain.apply_gradients([(g.copy(), b)])
    np.testing.assert_array_equal(a, b)
    assert ours.state(a)["z"].dtype == np.float32
    np.testing.assert_array_equal(ours.state(a)["z"], plain.state(b)["z"])


def _run(cls, steps, opt=None, w=None, seed=3, **hp):
    """``steps`` steps, the grad of each a function of the step's count (so a resumed run
    sees the grads of the run it resumes)."""
    w = np.random.default_rng(seed).standard_normal(N).astype(np.float32) if w is None else w
    opt = opt or cls(**hp)
    for _ in range(steps):
        opt.apply_gradients([(_grads(1, seed=100 + int(opt.iterations))[0], w)])
    return opt, w


def _state_bytes(opt, w):
    return {k: np.asarray(v).copy() for k, v in opt.state(w).items()}


@pytest.mark.parametrize("cls", [fusedopt.ScheduleFreeAdamW, fusedopt.ScheduleFreeSGD])
@pytest.mark.parametrize("fmt", FORMATS)
def test_eval_then_train_restores_y_bit_for_bit(cls, fmt):
    opt, w = _run(cls, 7, state_dtype=fmt, **HP)
    y, state = w.copy(), _state_bytes(opt, w)
    opt.eval()
    assert not np.array_equal(w, y)
    assert opt._engine.kept[0].dtype == np.float32
    opt.train()
    np.testing.assert_array_equal(w.view(np.uint32), y.view(np.uint32))
    for k, v in _state_bytes(opt, w).items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


@pytest.mark.parametrize("cls", [fusedopt.ScheduleFreeAdamW, fusedopt.ScheduleFreeSGD])
@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("how", ["state_dict", "file"])
def test_a_checkpoint_in_eval_mode_resumes_bit_for_bit(cls, convention, how, tmp_path):
    hp = dict(HP, convention=convention, state_dtype="q8")
    opt, w, resumed, w2, x = checkpoint_in_eval_mode(cls, hp, _run, how, tmp_path)
    assert resumed._engine.storages[0].state == "q8"
    np.testing.assert_array_equal(w2, x)
    resumed.train()
    _run(cls, 6, resumed, w2)
    np.testing.assert_array_equal(w2, w)
    for k, v in _state_bytes(resumed, w2).items():
        np.testing.assert_array_equal(v, np.asarray(opt.state(w)[k]), err_msg=k)


def test_a_checkpoint_of_another_format_is_refused_and_changes_nothing(tmp_path):
    opt, w = _run(fusedopt.ScheduleFreeAdamW, 4, state_dtype="q4", **HP)
    opt.eval()
    opt.save(tmp_path / "q4.safetensors")
    other, w2 = _run(fusedopt.ScheduleFreeAdamW, 3, state_dtype="q8", seed=4, **HP)
    before, state = w2.copy(), _state_bytes(other, w2)
    with pytest.raises(checkpoint.CheckpointMismatch, match="'v' is q4 in the checkpoint"):
        other.load(tmp_path / "q4.safetensors")
    np.testing.assert_array_equal(w2, before)
    assert not other._engine.evaluating
    for k, v in _state_bytes(other, w2).items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)


# --- the doors -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_functional_and_flat_params_step_as_the_class(fmt):
    grads = _grads(4, n=3000)
    w = np.random.default_rng(5).standard_normal(3000).astype(np.float32)
    core = fusedopt.ScheduleFreeAdamW(**HP, state_dtype=fmt, min_quantized_size=0)
    ref = w.copy()
    for g in grads:
        core.apply_gradients([(g.copy(), ref)])
    mine = w.copy()
    states = functional.quantized_state("schedulefreeadamw", mine, fmt, **HP)
    assert [s.dtype for s in states] == [np.float32, np.uint8]
    np.testing.assert_array_equal(states[0], w)  # z starts as the param
    for t, g in enumerate(grads, 1):
        functional.update("schedulefreeadamw", [mine], [g.copy()], [states], step=t,
                          state_dtype=fmt, **HP)
    np.testing.assert_array_equal(mine, ref)
    for a, b in zip(states, core._engine.states[0]):
        np.testing.assert_array_equal(a, b)
    arena = fusedopt.FlatParams({"w": (3000,)})
    arena.params["w"][...] = w
    opt = fusedopt.ScheduleFreeAdamW(**HP, state_dtype=fmt, min_quantized_size=0)
    for g in grads:
        arena.grads["w"][...] = g
        arena.step(opt)
    np.testing.assert_array_equal(arena.params["w"], ref)
    opt.eval()
    core.eval()
    np.testing.assert_array_equal(arena.params["w"], ref)
    opt.train()
    core.train()
    np.testing.assert_array_equal(arena.params["w"], ref)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Tanh(),
                               torch.nn.Linear(256, 16))  # 8192 and 4096 weights: quantized


_X = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
_Y = torch.randn(256, 16, generator=torch.Generator().manual_seed(2))
TORCH_HP = dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, warmup_steps=5)


def _loss(model):
    return torch.nn.functional.mse_loss(model(_X), _Y)


def _train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        _loss(model).backward()
        opt.step()


def test_torch_state_dict_in_eval_mode_resumes_bit_for_bit_and_a_mismatch_is_refused():
    import fusedopt.torch
    model = _model()
    opt = fusedopt.torch.AdamWScheduleFree(model.parameters(), **TORCH_HP, state_dtype="q8")
    opt.train()
    _train(model, opt, 6)
    opt.eval()
    saved_params = [p.detach().clone() for p in model.parameters()]
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    entry = opt.state_dict()["state"][0]
    assert entry["z"].dtype == torch.float32 and entry["exp_avg_sq"].dtype == torch.uint8
    assert "exp_avg_sq_absmax" in entry and "z_absmax" not in entry
    opt.train()
    _train(model, opt, 6)
    again = _model()
    with torch.no_grad():
        for p, q in zip(again.parameters(), saved_params):
            p.copy_(q)
    resumed = fusedopt.torch.AdamWScheduleFree(again.parameters(), **TORCH_HP,
                                               state_dtype="q8")
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert resumed.param_groups[0]["train_mode"] is False
    resumed.train()
    _train(again, resumed, 6)
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key
    # A state dict whose v is not q8's unsigned map, or whose z does not fit: refused,
    # naming what is wrong, and nothing changes (params, state, the point held).
    saved = resumed.state_dict()
    before = [p.detach().clone() for p in again.parameters()]
    state = {id(q): {k: v.clone() for k, v in resumed.state[q].items()}
             for q in again.parameters()}
    for key, value, match in (
            ("exp_avg_sq_qmap", torch.from_numpy(quant.qmap("q8", True)),
             "not fusedopt's q8 unsigned power map"),
            ("z", torch.zeros(3), r"saved 'z' has shape \(3,\)")):
        bad = copy.deepcopy(saved)
        bad["state"][0][key] = value
        bad["param_groups"][0]["train_mode"] = False
        with pytest.raises(ValueError, match=match):
            resumed.load_state_dict(bad)
        assert resumed.param_groups[0]["train_mode"] is True
        for p, q in zip(before, again.parameters()):
            assert torch.equal(p, q)
            for k, v in state[id(q)].items():
                assert torch.equal(v, resumed.state[q][k]), k
    _train(again, resumed, 1)  # and it still steps


def test_keras_doors_step_as_the_class():
    """fusedopt.keras' ScheduleFreeAdamW with q8 steps as the class does (Keras'
    convention), its z a float32 variable and its v a uint8 buffer; the Keras-style
    ScheduleFreeSGD with q8 keeps float32 variables and steps as without it."""
    keras = pytest.importorskip("keras")
    import fusedopt.keras
    values = [np.random.default_rng(6).standard_normal(s).astype(np.float32)
              for s in ((64, 80), (80,))]  # 5120 elements: quantized; 80: float32 state
    grads = [[np.random.default_rng(7 + t).standard_normal(v.shape).astype(np.float32)
              for v in values] for t in range(4)]

    def run(cls, **options):
        held = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(values)]
        opt = cls(learning_rate=0.01, **options)
        for step in grads:
            opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)
                                 for g, v in zip(step, held)])
        return opt, [keras.ops.convert_to_numpy(v) for v in held]

    opt, held = run(fusedopt.keras.ScheduleFreeAdamW, state_dtype="q8")
    params = [v.copy() for v in values]
    core = fusedopt.ScheduleFreeAdamW(learning_rate=0.01, state_dtype="q8", backend="cpu")
    for step in grads:
        core.apply_gradients([(g.copy(), p) for g, p in zip(step, params)])
    for v, p in zip(held, params):
        np.testing.assert_array_equal(v, p)
    for name, made, dtype in (("z", opt._momentums, "float32"), ("v", opt._velocities, "uint8")):
        assert made[0].dtype == dtype and made[1].dtype == "float32", name
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(made[0]),
                                      core.state(params[0])[name])
    opt, held = run(fusedopt.keras.ScheduleFreeSGD, state_dtype="q8")
    _, plain = run(fusedopt.keras.ScheduleFreeSGD)
    for a, b in zip(held, plain):
        np.testing.assert_array_equal(a, b)
    assert {v.dtype for v in opt.variables if "z" in v.path} == {"float32"}


# --- against the schedulefree package, in a training loop ----------------------------------

def test_q8_tracks_the_package_within_the_bound_of_v_quantization_error():
    """fusedopt.torch's q8 AdamWScheduleFree trains a model; the schedulefree package's
    AdamWScheduleFree (float32 state) steps its own copy of the params with the same grads
    (those of the q8 model: a fixed sequence for both), so the two runs differ only by the
    v each divides by. Per element, with q the decoded q8 v and f the package's v after
    step t, the step's normalized grad differs by at most

        dgn = |g| |1/(sqrt(q/bc) + eps) - 1/(sqrt(f/bc) + eps)| + wd dy,

    (the second term: torch's decay at y, where y differs by dy), and the points by what
    the update propagates (y = lerp(y, z, c) + lr (b1 (1 - c) - 1) gn; z -= lr gn):

        dy' = (1 - c) dy + c dz + lr |b1 (1 - c) - 1| dgn,    dz' = dz + lr dgn,

    plus each run's float32 roundings: the same computation in another order, a relative
    1e-5 of both steps' changes, and half an ulp of the param per run and step. The loss
    of the q8 model drops as the package's does."""
    import fusedopt.torch
    schedulefree = pytest.importorskip("schedulefree")
    steps, (b1, b2), eps = 40, TORCH_HP["betas"], TORCH_HP["eps"]
    lr, wd, warm = TORCH_HP["lr"], TORCH_HP["weight_decay"], TORCH_HP["warmup_steps"]
    ours_model, peer_model = _model(), _model()
    ours = fusedopt.torch.AdamWScheduleFree(ours_model.parameters(), **TORCH_HP,
                                            state_dtype="q8")
    peer = schedulefree.AdamWScheduleFree(peer_model.parameters(), **TORCH_HP)
    ours.train()
    peer.train()
    pairs = list(zip(ours_model.parameters(), peer_model.parameters()))
    dy = [np.zeros(p.numel()) for p, _ in pairs]
    dz = [np.zeros(p.numel()) for p, _ in pairs]
    lr_max, weight_sum, losses, quantized = -1.0, 0.0, [], 0
    f32 = np.finfo(np.float32).eps
    for t in range(1, steps + 1):
        ours.zero_grad()
        loss = _loss(ours_model)
        loss.backward()
        losses.append(loss.item())
        for p, q in pairs:
            q.grad = p.grad.clone()
        before = [(p.detach().double().reshape(-1).numpy().copy(),
                   q.detach().double().reshape(-1).numpy().copy()) for p, q in pairs]
        ours.step()
        peer.step()
        lr_t = lr * min(1.0, t / warm)
        lr_max = max(lr_max, lr_t)
        weight_sum += lr_max ** 2  # r = 0, weight_lr_power = 2
        c, bc = lr_max ** 2 / weight_sum, 1 - b2 ** t
        for k, (p, q) in enumerate(pairs):
            g = p.grad.double().reshape(-1).numpy()
            v = ours.state[p]["exp_avg_sq"]
            if v.dtype == torch.uint8:
                quantized += t == 1
                v = quant.dequantize(v.numpy(), p.numel(), "q8", signed=False)
            v = np.asarray(v, np.float64).reshape(-1)
            f = peer.state[q]["exp_avg_sq"].double().reshape(-1).numpy()
            dgn = np.abs(g) * np.abs(1 / (np.sqrt(v / bc) + eps) - 1 / (np.sqrt(f / bc) + eps)) \
                + wd * dy[k]
            moved = (np.abs(p.detach().double().reshape(-1).numpy() - before[k][0])
                     + np.abs(q.detach().double().reshape(-1).numpy() - before[k][1]))
            dy[k] = ((1 - c) * dy[k] + c * dz[k] + lr_t * abs(b1 * (1 - c) - 1) * dgn
                     + 1e-5 * moved + f32 * np.abs(before[k][0]))
            dz[k] = dz[k] + lr_t * dgn + 1e-5 * lr_t * np.abs(g) / (np.sqrt(f / bc) + eps)
    assert quantized == 2  # both weights' v in codes (the biases' below the threshold)
    worst, share = 0.0, 0.0
    for k, (p, q) in enumerate(pairs):
        gap = np.abs(p.detach().double().reshape(-1).numpy()
                     - q.detach().double().reshape(-1).numpy())
        assert np.all(gap <= dy[k]), (
            f"tensor {k}: {np.count_nonzero(gap > dy[k])} params beyond the bound, worst "
            f"excess {np.max(gap - dy[k])!r}")
        worst = max(worst, float(gap.max()))
        share = max(share, float(np.max(gap / np.maximum(dy[k], 1e-30))))
    assert worst > 0  # the quantization changed something
    peer_loss = float(_loss(peer_model))
    assert losses[-1] < 0.8 * losses[0] and peer_loss < 0.8 * losses[0]
    print(f"largest gap {worst:.3g}, at most {share:.2f} of its bound; loss {losses[0]:.4f} "
          f"-> {losses[-1]:.4f} (the package's model: {peer_loss:.4f})")


# --- bytes per param -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt,expected", [("q8", 4 + 1 + 4 / 256), ("q4", 4 + 0.5 + 4 / 128),
                                          ("float32", 8.0)])
def test_state_bytes_per_param(fmt, expected):
    """Measured from the arrays the optimizer holds, for a param of 2^20 elements: z's 4
    bytes, then v's codes and one float32 absmax per block."""
    n = 1 << 20
    w = np.zeros(n, np.float32)
    opt = fusedopt.ScheduleFreeAdamW(state_dtype=fmt)
    opt.apply_gradients([(np.ones(n, np.float32), w)])
    held = sum(np.asarray(a).nbytes for a in opt._engine.states[0])
    assert held / n == expected
    sgd = fusedopt.ScheduleFreeSGD(state_dtype=fmt)
    sgd.apply_gradients([(np.ones(n, np.float32), w)])
    assert sum(np.asarray(a).nbytes for a in sgd._engine.states[0]) / n == 4.0
    print(f"schedule-free AdamW, {fmt}: {held / n} state bytes per param")
