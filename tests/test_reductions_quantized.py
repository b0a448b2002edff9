"""LAMB and StableAdamW with quantized state (``state_dtype="q8"``/``"q4"``).

Their reduction pass reads the moments from the codes (``map[code] * absmax``, in the same
read of the buffers; fusedopt/backends/cpu/reduce.py) and the element pass is the
quantized span's; tests/test_quantized_state.py checks every variant's step against the
float64 reference on decoded state. Here: the doors. The Keras door steps as the class bit
for bit; fusedopt.torch's state_dict carries codes, scales and maps and resumes bit for
bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
import fusedopt.torch  # noqa: F401  (before torch: one OpenMP pool)

torch = pytest.importorskip("torch")

NAMES = ("Lamb", "StableAdamW")


@pytest.mark.parametrize("fmt", ["q8", "q4"])
@pytest.mark.parametrize("name", NAMES)
def test_keras_door_steps_as_the_class(name, fmt):
    keras = pytest.importorskip("keras")
    import fusedopt.keras
    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(64, 80), (80,)]]
    held = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(values)]
    opt = getattr(fusedopt.keras, name)(learning_rate=2.0**-7, state_dtype=fmt)
    core = getattr(fusedopt, name)(learning_rate=2.0**-7, state_dtype=fmt)
    params = [v.copy() for v in values]
    for _ in range(3):
        grads = [rng.standard_normal(v.shape).astype(np.float32) for v in values]
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v) for g, v in zip(grads, held)])
        core.apply_gradients([(g.copy(), p) for g, p in zip(grads, params)])
    for v, p in zip(held, params):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), p)
    coded = [v for v in opt.variables if "w0" in v.path]
    assert len(coded) == 2 and all(str(v.dtype) == "uint8" for v in coded)


@pytest.mark.parametrize("name", NAMES)
def test_torch_state_dict_has_codes_and_resumes_bit_for_bit(name):
    torch.manual_seed(0)
    cls = getattr(fusedopt.torch, name)
    start = torch.nn.Linear(100, 80)
    x = torch.randn(16, 100)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()

    model = torch.nn.Linear(100, 80)
    model.load_state_dict(start.state_dict())
    opt = cls(model.parameters(), lr=1e-2, state_dtype="q8")
    train(model, opt, 3)
    saved = opt.state_dict()
    entry = saved["state"][0]  # the 80 x 100 weight: quantized; the bias is float32
    assert entry["exp_avg"].dtype == entry["exp_avg_sq"].dtype == torch.uint8
    assert {"exp_avg_absmax", "exp_avg_qmap", "exp_avg_sq_absmax"} <= set(entry)
    assert saved["state"][1]["exp_avg"].dtype == torch.float32
    other = torch.nn.Linear(100, 80)
    other.load_state_dict(model.state_dict())
    again = cls(other.parameters(), lr=1e-2, state_dtype="q8")
    again.load_state_dict(saved)
    train(model, opt, 2)
    train(other, again, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
