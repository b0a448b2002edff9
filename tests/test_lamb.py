"""LAMB against keras.optimizers.Lamb in model.fit, against a plain torch LAMB in an autograd
loop, and per tensor against the float64 oracle when many tensors share one launch: the
trust ratio comes from the engine's per-tensor reduction phase
(fusedopt/engine/reductions.py)."""

import keras
import numpy as np
import pytest
import reference
import torch_loops as loops
import torch_peers
from cases import problem
from keras_fit import build_model, fit, variables, weights
from tolerances import VS_REFERENCE, VS_TORCH_SHADOW

import fusedopt
import fusedopt.keras
import fusedopt.torch
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cpu import backend as cpu_backend

#: 10 epochs of 5 batches: 50 steps.
EPOCHS, STEPS = 10, 50
#: max |fusedopt - Keras| over max |Keras|, per weight array, after 50 steps in fp32.
RELATIVE = 1e-6

#: Non-default settings; the second and third clip by norm first (then the grads are read
#: three times a step: the pre-pass, the reduction phase, the update).
KERAS_SETTINGS = [
    dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-5),
    dict(learning_rate=0.005, weight_decay=0.05, global_clipnorm=0.1),
    dict(learning_rate=0.02, beta_2=0.9, clipnorm=0.05),
]


def _relative(ours, theirs) -> float:
    return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
               for a, b in zip(ours, theirs))


@pytest.mark.parametrize("hp", KERAS_SETTINGS, ids=["betas-eps", "decay-global-clip", "clip"])
def test_lamb_fits_as_keras_lamb(hp):
    net = fit(fusedopt.keras.Lamb(**hp), epochs=EPOCHS)
    twin = fit(keras.optimizers.Lamb(**hp), epochs=EPOCHS)
    assert type(net.optimizer) is fusedopt.keras.Lamb
    assert int(net.optimizer.iterations) == int(twin.optimizer.iterations) == STEPS
    assert _relative(weights(net), weights(twin)) <= RELATIVE
    ours, theirs = variables(net.optimizer), variables(twin.optimizer)
    assert [p.split("/")[-1] for p in ours] == [p.split("/")[-1] for p in theirs]
    assert _relative(list(ours.values()), list(theirs.values())) <= 10 * RELATIVE
    keras.backend.clear_session()
    start = weights(build_model(0))
    assert _relative(weights(net), start) > 1e3 * RELATIVE  # training moved the weights


TORCH_SETTINGS = [dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1),
                  dict(lr=3e-3, eps=1e-7, weight_decay=0.0)]


@pytest.mark.parametrize("hp", TORCH_SETTINGS, ids=["decay", "no-decay"])
def test_torch_lamb_matches_the_paper_in_an_autograd_loop(hp):
    """fusedopt.torch.Lamb and a torch LAMB written from the paper (tests/torch_peers.py),
    the second fed the first's grads: 50 steps apart only by their arithmetic; and the
    float64 oracle, stepped with the same grads."""
    model, twin = loops.twins()
    x, y = loops.data()
    opt = fusedopt.torch.Lamb(model.parameters(), **hp)
    peer = torch_peers.Lamb(twin.parameters(), **hp)
    oracle = [p.detach().double().numpy().copy() for p in model.parameters()]
    states = [{} for _ in oracle]
    keras_names = dict(learning_rate=hp["lr"], beta_1=hp.get("betas", (0.9, 0.999))[0],
                       beta_2=hp.get("betas", (0.9, 0.999))[1], epsilon=hp["eps"],
                       weight_decay=hp["weight_decay"])
    for t in range(1, STEPS + 1):
        loops.train(model, opt, 1, x, y, shadow=(twin, peer))
        grads = [p.grad.double().numpy() for p in model.parameters()]
        oracle = [reference.lamb(w, g, s, t, keras_names, "torch")
                  for w, g, s in zip(oracle, grads, states)]
    loops.assert_close(model, twin, VS_TORCH_SHADOW)
    for p, w in zip(model.parameters(), oracle):
        got = p.detach().double().numpy()
        assert np.max(np.abs(got - w)) / np.max(np.abs(w)) <= VS_TORCH_SHADOW
    start = loops.mlp(0)
    assert loops.relative(next(model.parameters()), next(start.parameters())) > 1e-3
    assert float(opt.state[next(model.parameters())]["step"]) == STEPS


SHAPES = [(1,), (3,), (4097,), (278011,), (0,), (37, 53)]


@pytest.mark.parametrize("backend", ["cpu", "unfused", "cuda"], indirect=True)
@pytest.mark.parametrize("convention", ["keras", "torch"])
def test_every_tensor_of_one_launch_gets_its_own_ratio(backend, convention, monkeypatch):
    """Tensors of awkward sizes (one of several chunks, an empty one) in one step: each
    one's trust ratio is its own norms', as the oracle computes it tensor by tensor, and
    the CPU reduction is one call for all of them (CUDA: the kernels run on the host,
    tests/cuda_host)."""
    hp = dict(learning_rate=0.02, weight_decay=0.1, epsilon=1e-4)
    problems = [problem(shape, 6, seed=k) for k, shape in enumerate(SHAPES)]
    for k, (p, _) in enumerate(problems):
        p *= 10.0**(k % 3 - 1)  # norms far apart, so one ratio for all would show
    params = [p.copy() for p, _ in problems]
    opt = fusedopt.Lamb(convention=convention, backend=backend, **hp)
    calls = []
    real = cpu_backend.reduce
    monkeypatch.setattr(cpu_backend, "reduce", lambda *a, **k: calls.append(1) or real(*a, **k))
    full = {**REGISTRY["lamb"].defaults(), **hp}
    expected = [p.astype(np.float64) for p, _ in problems]
    states = [{} for _ in problems]
    for t in range(6):
        opt.apply_gradients([(g[t], p) for (_, g), p in zip(problems, params)])
        expected = [reference.lamb(w, g[t], s, t + 1, full, convention)
                    for w, (_, g), s in zip(expected, problems, states)]
    for got, want in zip(params, expected):
        np.testing.assert_allclose(got, want, **VS_REFERENCE[np.float32])
    assert len(calls) == (6 if backend == "cpu" else 0)


def test_the_ratio_is_one_where_a_norm_is_zero():
    """A zero param (||theta|| = 0) and a zero grad at step 1 (||u|| = 0) take the plain
    step lr * u, as Keras' ``where`` chooses: the values of Keras' own Lamb."""
    grads = [np.full(5, 2.0, np.float32), np.zeros(4, np.float32)]
    ours = [np.zeros(5, np.float32), np.ones(4, np.float32)]
    fusedopt.Lamb(learning_rate=0.1).apply_gradients(list(zip(grads, ours)))
    theirs = [keras.Variable(np.zeros(5, np.float32)), keras.Variable(np.ones(4, np.float32))]
    keras.optimizers.Lamb(learning_rate=0.1).apply_gradients(list(zip(grads, theirs)))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-7)
    assert ours[0][0] < -0.09 and (ours[1] == 1).all()


def test_cuda_kernels_exist_and_a_backend_without_reductions_is_refused():
    """LAMB has CUDA entry points for its element pass and its reduction phase (every
    storage, both flavours), generated from its rules; a backend with no reduction phase
    is refused with the fix before anything changes."""
    from fusedopt.backends.cuda import codegen, launch
    spec = REGISTRY["lamb"]
    files = codegen.generated([spec])
    assert {"lamb.cu", "lamb_reduce.cu"} <= set(files)
    entries = launch.all_entry_points()
    assert set(spec.reduce_entries()) | {"combine_sums"} == set(entries["lamb_reduce"])
    assert {e for _, _, e in spec.entries()} == set(entries["lamb"])
    opt = fusedopt.Lamb()
    p = np.ones(3, np.float32)
    opt.apply_gradients([(np.ones(3, np.float32), p)])  # built on the CPU
    engine = opt._engine
    before = p.copy()

    class NoReductions:
        name = "other"

    plan = type("Plan", (), {"backend": NoReductions})()
    from fusedopt.engine.reductions import reduction_phase
    with pytest.raises(ValueError, match="backend='cpu' or 'cuda'"):
        reduction_phase(engine, plan, (0,), [(None, [p])], [None], {})
    np.testing.assert_array_equal(p, before)
