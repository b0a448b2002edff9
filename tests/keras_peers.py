"""Keras optimizers no installed library has, with their update written in Keras' own way
(``update_step`` in ``keras.ops``, one variable at a time, float32): the peers of the
fusedopt.keras classes Keras lacks (fusedopt/keras/_peerless.py)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from keras import ops  # noqa: E402

from fusedopt.algorithms.registry import REGISTRY  # noqa: E402
from fusedopt.keras._peerless import keras_base  # noqa: E402

#: Keras' optimizer with fusedopt.StableAdamW's Keras-style arguments, config and variables
#: (one per slot: ``_m_variables``, ``_v_variables``), as fusedopt.keras.StableAdamW has it.
_StableAdamWArguments = keras_base(REGISTRY["stableadamw"])


class StableAdamW(_StableAdamWArguments):
    """StableAdamW (Wortsman et al., 2023) as optimi writes it - debiased betas, the lr of
    each variable divided by max(1, RMS(g^2 / max(v, eps^2))) - with Keras' weight decay
    (the base class's, before the update)."""

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        t = float(ops.convert_to_numpy(self.iterations)) + 1
        b1_hat = (self.beta_1**t - self.beta_1) / (self.beta_1**t - 1)
        b2_hat = (self.beta_2**t - self.beta_2) / (self.beta_2**t - 1)
        m = self._m_variables[self._get_variable_index(variable)]
        v = self._v_variables[self._get_variable_index(variable)]
        self.assign(m, m + (1 - b1_hat) * (g - m))
        self.assign(v, v * b2_hat + (1 - b2_hat) * g * g)
        rms = ops.sqrt(ops.mean(g * g / ops.maximum(v, self.epsilon**2)))
        lr_t = lr / ops.maximum(rms, 1.0)
        self.assign_sub(variable, lr_t * (m / (ops.sqrt(v) + self.epsilon)))
