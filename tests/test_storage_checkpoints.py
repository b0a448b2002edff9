"""Checkpoints of 16-bit training: state_dict carries every state array in its own dtype
(bfloat16 state, the float32 master, the int16 remainder), pickles, and a restored
optimizer continues bit for bit as the one that was never stopped."""

import pickle

import ml_dtypes
import numpy as np
import pytest

import fusedopt

BF16 = ml_dtypes.bfloat16
SETUPS = {
    "bf16 state": (BF16, dict(state_dtype="bfloat16")),
    "fp32 master": (BF16, dict(master_weights=True)),
    "remainder": (BF16, dict(master_weights="remainder")),
    "fp16 master": (np.float16, dict(master_weights=True)),
}
EXPECTED = {
    "bf16 state": {"m": "bfloat16", "v": "bfloat16"},
    "fp32 master": {"m": "float32", "v": "float32", "master": "float32"},
    "remainder": {"m": "float32", "v": "float32", "remainder": "int16"},
    "fp16 master": {"m": "float32", "v": "float32", "master": "float32"},
}


def _problem(dtype, steps):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(dtype) for s in ((7,), (4097,))]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params]
             for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_restored_optimizer_continues_bit_for_bit(request, setup, backend):
    if backend == "cuda":
        request.getfixturevalue("host_cuda")
    dtype, storage = SETUPS[setup]
    params, grads = _problem(dtype, 6)
    whole = fusedopt.Adam(learning_rate=0.05, backend=backend, **storage)
    first = fusedopt.Adam(learning_rate=0.05, backend=backend, **storage)
    kept = [p.copy() for p in params]
    for g in grads[:3]:
        whole.apply_gradients(zip(g, params))
        first.apply_gradients(zip(g, kept))
    checkpoint = pickle.loads(pickle.dumps(first.state_dict()))
    for slots in checkpoint["state"].values():
        assert {n: a.dtype.name for n, a in slots.items()} == EXPECTED[setup]
    resumed = fusedopt.Adam(learning_rate=0.05, backend=backend, **storage)
    resumed.load_state_dict(checkpoint)  # before build: applied when it builds
    for g in grads[3:]:
        whole.apply_gradients(zip(g, params))
        resumed.apply_gradients(zip(g, kept))
    assert resumed.iterations == whole.iterations == 6
    for a, b in zip(params + whole.variables, kept + resumed.variables):
        assert np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))


def test_the_config_carries_the_storage():
    opt = fusedopt.Adam(state_dtype="bfloat16", master_weights=False)
    assert opt.get_config()["state_dtype"] == "bfloat16" and "master_weights" not in \
        opt.get_config()
    again = fusedopt.Adam.from_config(fusedopt.Adam(master_weights="remainder").get_config())
    assert again.master_weights == "remainder"
    assert "state_dtype" not in fusedopt.Adam().get_config()  # the Keras keys by default
