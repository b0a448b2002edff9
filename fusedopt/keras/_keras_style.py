"""Keras optimizers that Keras itself does not have, written as Keras writes its own: Keras'
base class, its keyword arguments, variables made by ``build()`` and hyperparameters in
``get_config()``. fusedopt/keras/optimizers.py puts the fused update in front of each, as it
does for Keras' classes; Keras' per-variable ``update_step`` is never called."""

from __future__ import annotations

import keras


class StableAdamW(keras.optimizers.Optimizer):
    """StableAdamW's arguments and variables as a Keras optimizer (Keras 3.15 has none):
    ``learning_rate``, ``beta_1``, ``beta_2``, ``epsilon`` and Keras' base arguments, with
    torch-optimi's defaults (``weight_decay=0.01``, ``beta_2=0.99``, ``epsilon=1e-6``); one
    ``momentum`` and one ``velocity`` variable per model variable, as Keras' AdamW makes
    them. The update is fusedopt's (``fusedopt.StableAdamW``)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, epsilon=1e-6,
                 weight_decay=0.01, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None,
                 name="stable_adamw", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, use_ema=use_ema,
                         ema_momentum=ema_momentum,
                         ema_overwrite_frequency=ema_overwrite_frequency,
                         loss_scale_factor=loss_scale_factor,
                         gradient_accumulation_steps=gradient_accumulation_steps, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError("StableAdamW's update is fusedopt's fused step "
                                  "(fusedopt.keras.StableAdamW)")

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


#: Class name -> the Keras-style class, for optimizers Keras does not have.
CLASSES = {"StableAdamW": StableAdamW}
