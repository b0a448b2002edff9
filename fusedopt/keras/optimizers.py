"""The Keras optimizers with fusedopt's update: Keras' classes, arguments and variables.

Each class is ``keras.optimizers.<Name>`` with :class:`~fusedopt.keras._fused.FusedOptimizer`
in front: construct it with Keras' arguments (and defaults), and it prints, saves and loads as
Keras' class does. ``state_attributes`` maps the fusedopt registry's state slots to the lists
Keras' ``build()`` creates, so the fused kernels update Keras' own optimizer variables.

Registered with ``keras.saving.register_keras_serializable(package="fusedopt")``: a saved
model names them ``fusedopt>Adam`` & co, and ``keras.saving.load_model`` finds them once
``fusedopt.keras`` is imported. An optimizer made from Keras' name after ``install()`` is an
instance of a subclass (:class:`saved_as_keras`) that saves as Keras' own class instead
(fusedopt/keras/_by_name.py).
"""

from __future__ import annotations

import keras
from keras import ops

from ._fused import FusedOptimizer

_register = keras.saving.register_keras_serializable(package="fusedopt")


@_register
class Adam(FusedOptimizer, keras.optimizers.Adam):
    """``keras.optimizers.Adam``, fused. Keras' rule, with ``t = iterations + 1``::

        alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
        theta -= m * alpha / (sqrt(v) + epsilon)        # v -> max(vhat, v) with amsgrad

    Arguments as Keras' (learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
    amsgrad=False, weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
    ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name), plus
    ``backend``: "auto" (by the variables' device), "cpu" or "cuda", and for bfloat16
    variables ``stochastic_rounding`` / ``kahan_summation`` with ``seed`` (every class).

    Example::

        model.compile(optimizer=fusedopt.keras.Adam(learning_rate=1e-3), loss="mse")
    """

    spec_name = "adam"
    state_attributes = {"m": "_momentums", "v": "_velocities", "vhat": "_velocity_hats"}


@_register
class AdamW(FusedOptimizer, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW``, fused: Adam after ``theta -= theta * weight_decay * lr``
    (weight_decay=0.004), both in one pass."""

    spec_name = "adamw"
    state_attributes = Adam.state_attributes


@_register
class SGD(FusedOptimizer, keras.optimizers.SGD):
    """``keras.optimizers.SGD``, fused (learning_rate=0.01, momentum=0.0, nesterov=False)::

        m = momentum * m - lr * g;  theta += m          # nesterov: theta += momentum*m - lr*g
    """

    spec_name = "sgd"
    state_attributes = {"momentum": "momentums"}


@_register
class RMSprop(FusedOptimizer, keras.optimizers.RMSprop):
    """``keras.optimizers.RMSprop``, fused (learning_rate=0.001, rho=0.9, momentum=0.0,
    epsilon=1e-7, centered=False); epsilon inside the square root, as Keras'."""

    spec_name = "rmsprop"
    state_attributes = {"velocity": "_velocities", "momentum": "_momentums",
                        "average_gradient": "_average_gradients"}


@_register
class Adagrad(FusedOptimizer, keras.optimizers.Adagrad):
    """``keras.optimizers.Adagrad``, fused (learning_rate=0.001,
    initial_accumulator_value=0.1, epsilon=1e-7)."""

    spec_name = "adagrad"
    state_attributes = {"accumulator": "_accumulators"}


@_register
class Adadelta(FusedOptimizer, keras.optimizers.Adadelta):
    """``keras.optimizers.Adadelta``, fused (learning_rate=0.001, rho=0.95, epsilon=1e-7)."""

    spec_name = "adadelta"
    state_attributes = {"accumulated_grad": "_accumulated_grads",
                        "accumulated_delta_var": "_accumulated_delta_vars"}


@_register
class Adamax(FusedOptimizer, keras.optimizers.Adamax):
    """``keras.optimizers.Adamax``, fused (learning_rate=0.001, beta_1=0.9, beta_2=0.999,
    epsilon=1e-7)."""

    spec_name = "adamax"
    state_attributes = {"m": "_m", "u": "_u"}


@_register
class Nadam(FusedOptimizer, keras.optimizers.Nadam):
    """``keras.optimizers.Nadam``, fused (learning_rate=0.001, beta_1=0.9, beta_2=0.999,
    epsilon=1e-7).

    The fused rule takes the momentum product ``prod_k beta_1 (1 - 0.5 * 0.96**k)`` as a
    function of the step (fusedopt/algorithms/registry.py); Keras' ``u_product`` variable is still
    advanced each step, so checkpoints hold what Keras' Nadam would hold.
    """

    spec_name = "nadam"
    state_attributes = {"m": "_momentums", "v": "_velocities"}

    def _before_fused_update(self) -> None:
        product = self._u_product
        step = ops.cast(self.iterations + 1, product.dtype)
        product.assign(product * self.beta_1 * (1.0 - 0.5 * ops.power(0.96, step)))


@_register
class Lion(FusedOptimizer, keras.optimizers.Lion):
    """``keras.optimizers.Lion``, fused (learning_rate=0.001, beta_1=0.9, beta_2=0.99)::

        theta -= lr * sign(beta_1 * m + (1 - beta_1) * g);  m = beta_2 * m + (1 - beta_2) * g
    """

    spec_name = "lion"
    state_attributes = {"m": "_momentums"}


#: Keras' lower-case names (``keras.optimizers.get("adam")``) -> the fused classes.
CLASSES = {cls.__name__.lower(): cls
           for cls in (Adam, AdamW, SGD, RMSprop, Adagrad, Adadelta, Adamax, Nadam, Lion)}


class saved_as_keras:
    """The classes of optimizers made from Keras' names after ``install()``: ``Adam`` here is
    ``fusedopt.keras.Adam``, saved as ``keras.optimizers.Adam`` (fusedopt/keras/_by_name.py)."""


class by_name:
    """What ``install()`` puts under Keras' names (fusedopt/keras/_by_name.py)."""
