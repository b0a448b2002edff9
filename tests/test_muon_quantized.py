"""Muon with quantized momentum (``state_dtype="q8"``/``"q4"``).

Only the momentum m is kept in codes (the signed map); the update u that Newton-Schulz
reads is a float32 stack (``Slot.float_state`` in fusedopt/algorithms/muon.py). So a
quantized step is the float32 step on the decoded momentum, then m quantized again: the
params bit for bit and m's codes those of the host quantizer, on the CPU and unfused
backends, in both conventions, with tall (transposed) and stacked matrices; and through
fusedopt.torch the state_dict carries codes, scales and map and resumes bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
import fusedopt.torch  # noqa: F401  (before torch: one OpenMP pool)
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.engine import Engine
from fusedopt.memory import quant

torch = pytest.importorskip("torch")

HP = dict(learning_rate=0.02, weight_decay=0.01)
SHAPES = ((64, 80), (64, 80), (96, 48))  # a stack of two, and a tall one


def _engine(fmt, convention, backend, params):
    engine = Engine(REGISTRY["muon"], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=0)
    engine.add_group(HP)
    engine.add_params(params)
    return engine


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("convention", ["keras", "torch"])
@pytest.mark.parametrize("fmt", ["q8", "q4"])
def test_a_quantized_step_is_the_float32_step_on_decoded_momentum(fmt, convention, backend):
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    ours = _engine(fmt, convention, backend, ws)
    assert all(s[0].dtype == np.uint8 for s in ours.states)
    for t in range(1, 4):
        grads = [(rng.standard_normal(s) * rng.choice([0.01, 1.0], s)).astype(np.float32)
                 for s in SHAPES]
        plain_ws = [w.copy() for w in ws]
        plain = _engine("float32", convention, backend, plain_ws)
        for k, w in enumerate(ws):
            plain.states[k][0][...] = quant.dequantize(ours.states[k][0], w.size, fmt,
                                                       signed=True).reshape(w.shape)
        ours.step([g.copy() for g in grads])
        plain.step([g.copy() for g in grads])
        for k, (w, plain_w) in enumerate(zip(ws, plain_ws)):
            np.testing.assert_array_equal(w, plain_w, err_msg=f"step {t}, param {k}")
            expected = quant.quantize(plain.states[k][0].reshape(-1), fmt, signed=True)
            np.testing.assert_array_equal(ours.states[k][0], expected,
                                          err_msg=f"step {t}, param {k}: m")


def test_torch_door_state_dict_has_codes_and_resumes_bit_for_bit():
    torch.manual_seed(0)
    start = [torch.randn(s) for s in SHAPES]
    grads = [[torch.randn(s) for s in SHAPES] for _ in range(5)]

    def make(params):
        return fusedopt.torch.Muon(params, lr=0.02, weight_decay=0.1, state_dtype="q8")

    ws = [torch.nn.Parameter(s.clone()) for s in start]
    opt = make(ws)
    for gs in grads[:3]:
        for w, g in zip(ws, gs):
            w.grad = g
        opt.step()
    saved = opt.state_dict()
    entry = saved["state"][2]
    assert entry["momentum_buffer"].dtype == torch.uint8
    assert entry["momentum_buffer"].shape == SHAPES[2]
    assert entry["momentum_buffer_absmax"].shape == (quant.FORMATS["q8"].blocks(96 * 48),)
    assert torch.equal(entry["momentum_buffer_qmap"], torch.from_numpy(quant.qmap("q8", True)))

    again = [torch.nn.Parameter(w.detach().clone()) for w in ws]
    resumed = make(again)
    resumed.load_state_dict(saved)
    for gs in grads[3:]:
        for w, v, g in zip(ws, again, gs):
            w.grad = v.grad = g
        opt.step()
        resumed.step()
    assert all(torch.equal(w, v) for w, v in zip(ws, again))
    held = sum(a.nbytes for s in opt._engine.states for a in s) / sum(w.numel() for w in ws)
    assert held == pytest.approx(1 + 4 / 256, rel=0.01)  # 8-bit codes and a scale a block


def test_functional_steps_as_the_class():
    from fusedopt import functional
    rng = np.random.default_rng(5)
    w = rng.standard_normal(SHAPES[2]).astype(np.float32)
    v = w.copy()
    opt = fusedopt.Muon(**HP, state_dtype="q8", min_quantized_size=0)
    states = [functional.quantized_state("muon", v, "q8", **HP)]
    for step in range(1, 4):
        g = rng.standard_normal(w.shape).astype(np.float32)
        opt.apply_gradients([(g, w)])
        functional.update("muon", [v], [g], states, step=step, state_dtype="q8", **HP)
    np.testing.assert_array_equal(w, v)
    np.testing.assert_array_equal(opt._engine.states[0][0], states[0][0])


def test_keras_door_steps_the_muon_route_as_the_class_and_saves_its_codes(tmp_path):
    """fusedopt.keras.Muon with q8: its 2-D variable steps as fusedopt.Muon on torch
    tensors (the same matmuls), momentum codes included; Keras' AdamW route keeps its m
    and v as buffers too (float32 under min_quantized_size); a saved model continues bit
    for bit."""
    import keras
    from keras_fit import variables
    from test_muon_keras import _Data, _fit, _weights
    rng = np.random.default_rng(0)
    shapes = [(64, 80), (80,), (5000,)]
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    hp = dict(learning_rate=2.0**-7, weight_decay=2.0**-8)  # exact in Keras' float32
    held = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(values)]
    opt = fusedopt.keras.Muon(**hp, state_dtype="q8")
    core = fusedopt.Muon(**hp, state_dtype="q8")
    w = torch.from_numpy(values[0].copy())
    for step in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v) for g, v in zip(step, held)])
        core.apply_gradients([(torch.from_numpy(step[0].copy()), w)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(held[0]), w.numpy())
    kinds = {v.path.split("/")[-1]: (str(v.dtype), tuple(v.shape)) for v in opt.variables}
    n = quant.FORMATS["q8"].nbytes
    assert kinds["w0_momentum"] == ("uint8", (n(5120),))
    assert kinds["w1_momentum"] == kinds["w1_velocity"] == ("float32", (80,))
    assert kinds["w2_momentum"] == kinds["w2_velocity"] == ("uint8", (n(5000),))
    m = [v for v in opt.variables if v.path.endswith("w0_momentum")][0]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(m), np.asarray(core.state(w)["m"]))

    make = lambda: fusedopt.keras.Muon(state_dtype="q8", min_quantized_size=0)  # noqa: E731
    train = _Data()
    uninterrupted = _fit(make(), epochs=3, train=train)
    first = _fit(make(), epochs=2, train=train)
    first.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.get_config()["state_dtype"] == "q8"
    loaded.fit(train.x, train.y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(_weights(loaded), _weights(uninterrupted)))
    assert all(np.array_equal(a, b) for a, b in zip(
        variables(loaded.optimizer).values(), variables(uninterrupted.optimizer).values()))
