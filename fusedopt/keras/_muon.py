"""``fusedopt.keras.Muon``: ``keras.optimizers.Muon`` stepped by two fused engines.

Keras' Muon gives each variable one of two rules, by its own ``_should_use_adamw``: AdamW
for every variable that is not 2-D, every one whose path holds "embedding" (with
``exclude_embeddings``) and every one whose path matches a keyword of ``exclude_layers``;
the Muon step for the others. Here those are two routes (fusedopt/keras/_routes.py), each
stepped by an engine of its own (fusedopt/keras/_routed.py), decided once, when the
optimizer is built, by Keras' predicate:

- the Muon engine (fusedopt/algorithms/muon.py, Keras' convention) on the 2-D variables:
  ``learning_rate``, ``weight_decay``, ``momentum``, ``nesterov``, ``muon_a/b/c``,
  ``ns_steps`` and ``rms_rate``; Keras' state ``momentums``;
- an AdamW engine in Keras' convention (fusedopt/algorithms/adam.py) on the others:
  ``adam_beta_1``, ``adam_beta_2`` and ``epsilon``, at ``learning_rate * adam_lr_ratio``;
  Keras' state ``momentums`` and ``adam_velocities``.

Weight decay is Keras' Muon's: before the update, ``theta -= theta * wd * lr`` with ``wd``
the ``weight_decay`` of a Muon variable and the ``adam_weight_decay`` of an AdamW one
(either None: no decay), ``lr`` the learning rate itself (not times ``adam_lr_ratio``), and
variables excluded by ``exclude_from_weight_decay`` left alone. The Muon engine's weight
pass decays in that form (fusedopt/algorithms/muon.py). The AdamW rule's Keras form is
``theta *= 1 - lr * wd`` (Keras' AdamW on torch), which rounds differently, and it would
take ``lr * adam_lr_ratio``: so the AdamW variables are decayed by Keras' Muon's own
``_apply_weight_decay`` (a pass of Keras' ops over them, where ``adam_weight_decay`` is
set) just before their engine steps, once every engine has checked its part of the step,
and the AdamW engine is given no weight decay. Likewise ``global_clipnorm``, a norm over
the grads of both engines, is Keras' own clipping, before the grads are split;
``clipnorm`` and ``clipvalue`` (per tensor, per element) are the engines'.

Keras' variables are Keras' own (``build()`` is Keras'), so configs, saved models and
checkpoints are Keras Muon's. ``update_step(grad, variable, lr)`` called on its own, as
Keras' tests call it, is that variable's fused step at ``lr`` without weight decay, as
Keras' is.

What the Muon engine steps, and so what this class takes (as ``fusedopt.torch.Muon``): CPU
variables of float32, float64 or bfloat16 whose state stays in their own dtype with plain
stores, or quantized (``state_dtype="q8"``/``"q4"``: both routes' slot variables are then
the quantized buffers, fusedopt/keras/_quantized.py); ``stochastic_rounding``,
``kahan_summation`` and the CUDA backend are refused when the optimizer is made, float16
variables and CUDA ones when it is built.
"""

from __future__ import annotations

import math
import numbers

import keras

from ._fused import FusedOptimizer
from ._routed import Routed
from ._routes import Route

#: Keras' Muon: registry hyperparameter -> its argument (``epsilon`` there is AdamW's).
_MUON_ARGUMENTS = {n: n for n in ("learning_rate", "weight_decay", "momentum", "nesterov",
                                  "muon_a", "muon_b", "muon_c", "ns_steps", "rms_rate")}
_ADAMW_ARGUMENTS = {"learning_rate": "learning_rate", "beta_1": "adam_beta_1",
                    "beta_2": "adam_beta_2", "epsilon": "epsilon",
                    "weight_decay": "adam_weight_decay"}


class MuonRoute(Route):
    """The Muon step, for the variables Keras' Muon does not give AdamW."""

    clips_globally = False  # Keras' clipping by the norm of every grad: Muon._clip_gradients

    def __init__(self):
        super().__init__("muon", {"m": "momentums"}, _MUON_ARGUMENTS)

    def holds(self, optimizer, variable) -> bool:
        return not optimizer._should_use_adamw(variable)


class AdamWRoute(Route):
    """AdamW (Keras' convention) at ``learning_rate * adam_lr_ratio``, for the others."""

    clips_globally = False

    def __init__(self):
        super().__init__("adamw", {"m": "momentums", "v": "adam_velocities"},
                         _ADAMW_ARGUMENTS, reads=("adam_lr_ratio",))

    def holds(self, optimizer, variable) -> bool:
        return bool(optimizer._should_use_adamw(variable))

    def hyper(self, optimizer, values: dict, decay: bool = True) -> dict:
        values = dict(values)
        ratio = values.pop("adam_lr_ratio")
        if not _real(ratio) or not math.isfinite(ratio) or ratio < 0:
            raise ValueError(
                f"{type(optimizer).__name__}: adam_lr_ratio must be a finite number >= 0 (the "
                f"AdamW variables' learning rate is learning_rate * adam_lr_ratio), got "
                f"{ratio!r}")
        rate = values["adam_weight_decay"]
        if rate is not None and (not _real(rate) or not math.isfinite(rate) or rate < 0):
            raise ValueError(f"{type(optimizer).__name__}: adam_weight_decay must be None or "
                             f"a finite number >= 0, got {rate!r}")
        values["adam_weight_decay"] = 0.0  # Keras' Muon's code decays them: before_step
        values["learning_rate"] = values["learning_rate"] * ratio
        return values

    def before_step(self, optimizer, variables) -> None:
        # Keras' Muon's decay of these variables: theta - theta * adam_weight_decay * lr
        keras.optimizers.Muon._apply_weight_decay(optimizer, variables)


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


#: The engines of fusedopt.keras.Muon, in the order their checks run.
ROUTES = (MuonRoute(), AdamWRoute())


#: The class's docstring: what it is, then this module's account of how.
_CLASS_DOC = ("``keras.optimizers.Muon``, fused: Keras' arguments, defaults, config and "
              "variables; its 2-D variables take the Muon step of one engine, the others the "
              "AdamW step of another, as Keras' Muon routes them.\n\n"
              + __doc__.split("\n\n", 1)[1])


class Muon(FusedOptimizer, keras.optimizers.Muon):
    __doc__ = _CLASS_DOC
    __module__ = "fusedopt.keras.optimizers"  # with the other classes (registered there)

    spec_name = "muon"
    state_attributes = {"m": "momentums"}

    def _fused_for(self, backend, rounding, quantized):
        name = type(self).__name__
        if rounding.active:
            flag = "stochastic_rounding" if rounding.stochastic_rounding else "kahan_summation"
            raise ValueError(
                f"{name}: {flag}=True is not supported: the Muon step keeps its state in each "
                "variable's dtype with plain stores (no stochastic rounding, Kahan summation "
                "or master weights, as fusedopt.torch.Muon); drop it (bfloat16 variables "
                "are stepped with round-to-nearest stores)")
        if backend == "cuda":
            raise ValueError(
                f"{name}: backend='cuda' is not supported by this class yet (its two "
                "routes are not run on CUDA tensors; fusedopt.Muon steps CuPy arrays on "
                "'cuda'); use backend='auto' or 'cpu' with the model's variables on the CPU")
        return Routed(self, backend, rounding, quantized, ROUTES)

    def build(self, variables):
        if self.built:
            return
        variables = list(variables)
        for variable in variables:
            if not self._should_use_adamw(variable) and variable.value.device.type != "cpu":
                raise ValueError(
                    f"{type(self).__name__}: variable {variable.path!r} is on "
                    f"{variable.value.device}, and this class steps on the CPU only (its "
                    "routes are not run on CUDA tensors yet); keep the model on the CPU, "
                    "or list the layer in exclude_layers to give it AdamW")
        super().build(variables)

    def _clip_gradients(self, grads):
        if self._fused.applying and self.global_clipnorm and self.global_clipnorm > 0:
            # One norm over the grads of both engines: Keras' clipping, before the split
            return keras.optimizers.Muon._clip_gradients(self, grads)
        return super()._clip_gradients(grads)  # the engines clip (or Keras', on its own)

    def update_step(self, gradient, variable, learning_rate):
        if self._fused.applying:  # inside apply(): the fused step runs, not this
            return super().update_step(gradient, variable, learning_rate)
        # Called on its own (Keras' tests do): that variable's step at ``learning_rate``,
        # with no weight decay and no clipping (Keras' apply() does those around it).
        self._fused.step(self, [gradient], [variable], learning_rate=learning_rate)
