"""The Keras convention of fusedopt.Muon against keras.optimizers.Muon on 2-D variables
(those Keras gives the Muon step): 50 steps of the same grads, two non-default settings,
within 1e-6 relative in float32. fusedopt.keras.Muon, which also gives Keras' other
variables its AdamW step, is tested in model.fit by tests/test_muon_keras.py."""

import keras
import numpy as np
import pytest

import fusedopt

STEPS = 50
SHAPES = [(24, 8), (13, 24), (13, 13), (13, 13), (1, 16)]
SETTINGS = [
    dict(learning_rate=0.02, weight_decay=0.1, nesterov=False, ns_steps=3),
    dict(learning_rate=0.01, weight_decay=None, momentum=0.8, rms_rate=None, muon_a=3.0,
         muon_b=-3.2, muon_c=1.2, ns_steps=6),
    dict(learning_rate=0.02, weight_decay=0.1, rms_rate=0.0),  # Keras: no update, decay only
]


def _problem():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


@pytest.mark.parametrize("hp", SETTINGS, ids=["no-nesterov", "no-rms-rate", "zero-rms-rate"])
def test_keras_convention_matches_keras_muon(hp):
    params, grads = _problem()
    variables = [keras.Variable(p.copy(), name=f"w{i}") for i, p in enumerate(params)]
    peer = keras.optimizers.Muon(**hp)
    ours = fusedopt.Muon(**hp)
    mine = [p.copy() for p in params]
    for g in grads:
        peer.apply_gradients([(keras.ops.convert_to_tensor(x), v) for x, v in zip(g, variables)])
        ours.apply_gradients(list(zip(g, mine)))
    moved = max(float(np.abs(a - p).max()) for a, p in zip(mine, params))
    assert moved > 1e-2
    for a, v in zip(mine, variables):
        b = keras.ops.convert_to_numpy(v.value)
        assert float(np.abs(a - b).max() / np.abs(b).max()) <= 1e-6
