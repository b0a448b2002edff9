"""Schedule-free AdamW and SGD against the schedulefree package (1.4.1) in a real autograd
loop, and their two points: eval()/train() round trips, stepping in eval mode refused,
checkpoints taken in eval mode (torch state_dict, fusedopt's state_dict and safetensors
file) resuming bit for bit, and checkpoints exchanged with the package."""

import copy
import io

import numpy as np
import pytest
import torch

import fusedopt
import fusedopt.torch

schedulefree = pytest.importorskip("schedulefree")

#: Two non-default hyperparameter sets per optimizer (warm-up, r, the lr weighting, decay).
SETS = {
    "AdamWScheduleFree": [
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, warmup_steps=10, r=1.0,
             weight_lr_power=1.5),
        dict(lr=0.003, betas=(0.95, 0.9), weight_decay=0.1, warmup_steps=3, r=0.5,
             weight_lr_power=0.0),
    ],
    "SGDScheduleFree": [
        dict(lr=0.05, momentum=0.7, weight_decay=0.01, warmup_steps=5, r=0.5),
        dict(lr=0.2, momentum=0.95, weight_decay=0.0, weight_lr_power=0.0, warmup_steps=2),
    ],
}
CASES = [(name, i) for name in SETS for i in range(2)]
STEPS = 50


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


_X = torch.randn(64, 10, generator=torch.Generator().manual_seed(1))
_Y = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))


def _train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(_X), _Y).backward()
        opt.step()


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _rel(a, b):
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(a, b))


@pytest.mark.parametrize("name,case", CASES)
def test_matches_the_package_in_a_training_loop(name, case):
    ours_model, peer_model = _model(), _model()
    ours = getattr(fusedopt.torch, name)(ours_model.parameters(), **SETS[name][case])
    peer = getattr(schedulefree, name)(peer_model.parameters(), **SETS[name][case])
    ours.train()
    peer.train()
    _train(ours_model, ours, STEPS)
    _train(peer_model, peer, STEPS)
    assert _rel(_params(ours_model), _params(peer_model)) < 1e-6  # y
    ours.eval()
    peer.eval()
    assert _rel(_params(ours_model), _params(peer_model)) < 1e-6  # x
    for p, q in zip(ours_model.parameters(), peer_model.parameters()):
        for key in peer.state[q]:
            assert (ours.state[p][key] - peer.state[q][key]).abs().max() \
                <= 1e-6 * peer.state[q][key].abs().max()
    for key in ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode"):
        assert ours.param_groups[0][key] == pytest.approx(peer.param_groups[0][key], rel=1e-12)


@pytest.mark.parametrize("name", list(SETS))
def test_step_in_eval_mode_is_refused_and_changes_nothing(name):
    model = _model()
    opt = getattr(fusedopt.torch, name)(model.parameters())
    model(_X).sum().backward()
    before = _params(model)
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        opt.step()  # a new optimizer is in eval mode, as the package's
    opt.train()
    opt.step()
    opt.eval()
    after = _params(model)
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(after, _params(model)))
    assert not all(torch.equal(p, q) for p, q in zip(before, after))


@pytest.mark.parametrize("name,case", CASES)
def test_eval_then_train_restores_y_bit_for_bit(name, case):
    model = _model()
    opt = getattr(fusedopt.torch, name)(model.parameters(), **SETS[name][case])
    opt.train()
    _train(model, opt, 7)
    y = _params(model)
    opt.eval()
    x = _params(model)
    assert not all(torch.equal(p, q) for p, q in zip(x, y))
    opt.eval()  # already there: nothing moves
    assert all(torch.equal(p, q) for p, q in zip(x, _params(model)))
    opt.train()
    assert all(torch.equal(p, q) for p, q in zip(y, _params(model)))
    # The package's lerp back rounds: its round trip is not exact (why y is kept).
    peer_model = _model()
    peer_model.load_state_dict(model.state_dict())
    peer = getattr(schedulefree, name)(peer_model.parameters(), **SETS[name][case])
    peer.load_state_dict(copy.deepcopy(opt.state_dict()))
    peer.eval()
    peer.train()
    assert not all(torch.equal(p, q) for p, q in zip(y, _params(peer_model)))


def _resume(name, case, save, load):
    """Train 10 steps, eval, save, train 10 more (the uninterrupted run); load the saved
    checkpoint into a new optimizer over the saved params, train 10: the same bits."""
    model = _model()
    opt = getattr(fusedopt.torch, name)(model.parameters(), **SETS[name][case])
    opt.train()
    _train(model, opt, 10)
    opt.eval()
    saved_params = _params(model)
    saved = save(opt)
    opt.train()
    _train(model, opt, 10)
    opt.eval()
    again = _model()
    with torch.no_grad():
        for p, q in zip(again.parameters(), saved_params):
            p.copy_(q)
    resumed = getattr(fusedopt.torch, name)(again.parameters(), **SETS[name][case])
    load(resumed, saved)
    assert resumed.param_groups[0]["train_mode"] is False  # the checkpoint says: x
    resumed.train()
    _train(again, resumed, 10)
    resumed.eval()
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), again.parameters()):
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key


@pytest.mark.parametrize("name,case", CASES)
def test_torch_checkpoint_in_eval_mode_resumes_bit_for_bit(name, case):
    def save(opt):
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        return buffer.getvalue()

    _resume(name, case, save,
            lambda opt, data: opt.load_state_dict(torch.load(io.BytesIO(data))))


@pytest.mark.parametrize("name", list(SETS))
def test_the_package_checkpoint_in_eval_mode_loads_and_continues_as_the_package(name):
    hp = SETS[name][0]
    peer_model = _model()
    peer = getattr(schedulefree, name)(peer_model.parameters(), **hp)
    peer.train()
    _train(peer_model, peer, 10)
    peer.eval()  # the package saves in eval mode; its state has no kept y
    ours_model = _model()
    ours_model.load_state_dict(peer_model.state_dict())
    ours = getattr(fusedopt.torch, name)(ours_model.parameters(), **hp)
    ours.load_state_dict(peer.state_dict())
    ours.train()  # lerps back, as the package does
    peer.train()
    assert _rel(_params(ours_model), _params(peer_model)) < 1e-6
    _train(ours_model, ours, 20)
    _train(peer_model, peer, 20)
    assert _rel(_params(ours_model), _params(peer_model)) < 1e-6
    # and the reverse: ours, saved in eval mode, continues in the package
    ours.eval()
    back_model = _model()
    back_model.load_state_dict(ours_model.state_dict())
    back = getattr(schedulefree, name)(back_model.parameters(), **hp)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))  # torch would share the tensors
    back.train()
    ours.train()
    _train(ours_model, ours, 5)
    _train(back_model, back, 5)
    assert _rel(_params(ours_model), _params(back_model)) < 1e-6


# --- the Keras-style classes: NumPy params, state_dict and safetensors checkpoints -------------

def _numpy_run(cls, steps, opt=None, w=None, **hp):
    rng = np.random.default_rng(3)
    w = rng.standard_normal(257).astype(np.float32) if w is None else w
    opt = opt or cls(**hp)
    for t in range(steps):
        g = np.random.default_rng(100 + t).standard_normal(w.shape).astype(w.dtype)
        opt.apply_gradients([(g, w)])
    return opt, w


def checkpoint_in_eval_mode(cls, hp, run, how, tmp_path):
    """``run(cls, 6, **hp)`` put in eval mode and checkpointed (``how``: its "state_dict" or
    a "file"), then trained and run 6 steps more; the checkpoint loaded into a new optimizer
    on a copy of the eval point. (the optimizer, its param, the resumed one, its param, the
    eval point)."""
    opt, w = run(cls, 6, **hp)
    opt.eval()
    x = w.copy()
    if how == "file":
        opt.save(tmp_path / "sf.safetensors")
    saved = copy.deepcopy(opt.state_dict())
    opt.train()
    run(cls, 6, opt, w)
    w2 = x.copy()
    if how == "file":
        resumed = fusedopt.load(tmp_path / "sf.safetensors", [w2])
    else:
        resumed = cls(**hp)
        resumed.build([w2])
        resumed.load_state_dict(saved)
    return opt, w, resumed, w2, x


@pytest.mark.parametrize("cls", [fusedopt.ScheduleFreeAdamW, fusedopt.ScheduleFreeSGD])
@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("how", ["state_dict", "file"])
def test_core_checkpoint_in_eval_mode_resumes_bit_for_bit(cls, convention, how, tmp_path):
    hp = dict(learning_rate=0.02, warmup_steps=3, weight_decay=0.1, convention=convention)
    opt, w, resumed, w2, x = checkpoint_in_eval_mode(cls, hp, _numpy_run, how, tmp_path)
    with pytest.raises(RuntimeError, match="eval"):
        resumed.apply_gradients([(np.ones(257, np.float32), w2)])
    np.testing.assert_array_equal(w2, x)
    resumed.train()
    _numpy_run(cls, 6, resumed, w2)
    np.testing.assert_array_equal(w2, w)


def test_core_round_trip_with_masters_and_16_bit_state():
    import ml_dtypes
    for options in (dict(master_weights=True), dict(state_dtype="bfloat16")):
        w = np.random.default_rng(0).standard_normal(1031).astype(ml_dtypes.bfloat16)
        opt, w = _numpy_run(fusedopt.ScheduleFreeAdamW, 5, w=w, learning_rate=0.05,
                            **options)
        y, state = w.copy(), {k: v.copy() for k, v in opt.state(w).items()}
        opt.eval()
        assert not np.array_equal(w, y)
        opt.train()
        np.testing.assert_array_equal(w.view(np.uint16), y.view(np.uint16))
        for k, v in opt.state(w).items():
            np.testing.assert_array_equal(np.asarray(v).view(np.uint8),
                                          np.asarray(state[k]).view(np.uint8))


@pytest.mark.parametrize("options,match", [
    ({}, r"bfloat16 with float32 state.*state_dtype.*master"),
    (dict(kahan_summation=True, state_dtype="bfloat16"), r"Kahan.*master_weights"),
    (dict(state_dtype="q8", min_quantized_size=0),
     r"bfloat16 with float32 state.*q8 state keeps z in float32.*master_weights=True"),
])
def test_switch_refused_where_y_could_not_come_back_exactly(options, match):
    import ml_dtypes
    opt, w = _numpy_run(fusedopt.ScheduleFreeAdamW, 1, w=np.ones(257, ml_dtypes.bfloat16),
                        **options)
    before = w.copy(), {k: v.copy() for k, v in opt.state(w).items()}
    with pytest.raises(ValueError, match=match):
        opt.eval()
    np.testing.assert_array_equal(w.view(np.uint16), before[0].view(np.uint16))
    for k, v in opt.state(w).items():
        np.testing.assert_array_equal(np.asarray(v).view(np.uint8),
                                      np.asarray(before[1][k]).view(np.uint8))
    opt.apply_gradients([(np.ones(257, ml_dtypes.bfloat16), w)])  # still in train mode


def test_torch_float16_params_need_float16_state_or_a_master_to_switch():
    model = _model().half()
    opt = fusedopt.torch.AdamWScheduleFree(model.parameters())
    opt.train()
    model(_X.half()).sum().backward()
    opt.step()
    with pytest.raises(ValueError, match="float16 with float32 state"):
        opt.eval()
    assert opt.param_groups[0]["train_mode"] is True
    model = _model().half()
    opt = fusedopt.torch.AdamWScheduleFree(model.parameters(), master_weights=True)
    opt.train()
    model(_X.half()).sum().backward()
    opt.step()
    y = _params(model)
    opt.eval()
    opt.train()
    assert all(torch.equal(p, q) for p, q in zip(y, _params(model)))


@pytest.mark.parametrize("bad,match", [
    (dict(beta_1=0.0), r"beta_1 must be in \(0, 1\)"),
    (dict(beta_1=1.0), r"beta_1 must be in \[0, 1\)"),
    (dict(warmup_steps=-1), "warmup_steps must be a finite number >= 0"),
])
def test_bad_hyperparameters_name_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.ScheduleFreeAdamW(**bad)


def test_torch_bad_momentum_names_the_argument():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        fusedopt.torch.SGDScheduleFree(_model().parameters(), momentum=1.0)
    with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\)"):
        fusedopt.torch.SGDScheduleFree(_model().parameters(), momentum=0.0)
