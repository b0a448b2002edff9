"""Keras' published single-step golden values (../shared/REFERENCE.md), every backend."""

import numpy as np
import pytest

import fusedopt

GOLDEN = {
    "Adam": [0.5, 1.5, 2.5, 3.5],
    "AdamW": [0.4980, 1.4960, 2.4940, 3.4920],
}


@pytest.mark.parametrize("backend", ["cpu", "unfused"])
@pytest.mark.parametrize("cls", sorted(GOLDEN))
def test_keras_golden_values(cls, backend):
    x = np.array([1, 2, 3, 4], np.float32)
    g = np.array([1, 6, 7, 2], np.float32)
    opt = getattr(fusedopt, cls)(learning_rate=0.5, backend=backend)
    opt.apply_gradients([(g, x)])
    np.testing.assert_allclose(x, GOLDEN[cls], atol=1e-4)
