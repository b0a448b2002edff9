"""Keras optimizer classes for the optimizers Keras does not ship (RAdam, Rprop, ASGD,
AdEMAMix, ...): what ``fusedopt.keras`` puts in front of :class:`FusedOptimizer` where
``keras.optimizers`` has no class to reuse.

Each is a ``keras.optimizers.Optimizer`` made from the optimizer's declaration
(fusedopt/algorithms/<family>.py): its Keras-style arguments and defaults (as
``fusedopt.<ClassName>`` has them) after Keras' own (``learning_rate`` first, then
``weight_decay``, clipping, EMA, loss scaling, gradient accumulation, ``name``), each
checked as the declaration checks it; ``get_config()`` with every one of them, so that
``from_config`` and ``keras.saving.load_model`` rebuild it; and one optimizer variable per
state slot and model variable, named after the slot and made by ``build()`` with the slot's
initial value. Its update is the fused one (FusedOptimizer): Keras' ``update_step`` is
never called.
"""

from __future__ import annotations

import keras

#: Keras' own constructor arguments after the optimizer's, with their defaults.
_KERAS_ARGUMENTS = (("weight_decay", None), ("clipnorm", None), ("clipvalue", None),
                    ("global_clipnorm", None), ("use_ema", False), ("ema_momentum", 0.99),
                    ("ema_overwrite_frequency", None), ("loss_scale_factor", None),
                    ("gradient_accumulation_steps", None), ("name", None))


def state_attributes(spec) -> dict:
    """Slot -> the attribute holding its variables (one per model variable)."""
    return {s.name: f"_{s.name}_variables" for s in spec.slot_decls}


def keras_base(spec) -> type:
    """A ``keras.optimizers.Optimizer`` subclass with ``spec``'s Keras-style arguments."""
    hypers = {h.name: h for h in spec.hypers}
    own = tuple(n for n in (spec.keras_signature or tuple(hypers))
                if n not in ("learning_rate", "weight_decay") and "keras" in hypers[n].conventions)
    defaults = {"learning_rate": hypers["learning_rate"].default,
                **{n: hypers[n].default for n in own}, **dict(_KERAS_ARGUMENTS)}
    if "weight_decay" in hypers:  # the optimizer's own default (StableAdamW's 0.01)
        defaults["weight_decay"] = hypers["weight_decay"].default
    names = ("learning_rate", *own, *(n for n, _ in _KERAS_ARGUMENTS))
    parameters = ", ".join(f"{n}=__defaults[{n!r}]" for n in names)
    passed = ", ".join(f"{n}={n}" for n in names if n not in own)
    text = (f"def __init__(self, {parameters}, **kwargs):\n"
            f"    __Base.__init__(self, {passed}, **kwargs)\n"
            f"    self._own_values({', '.join(f'{n}={n}' for n in own)})\n")

    class Base(keras.optimizers.Optimizer):
        _own = own

        def _own_values(self, **values):
            for name, value in values.items():
                if not isinstance(value, (keras.Variable, *_tensor_types())):
                    hypers[name].validate(value, "keras")
                setattr(self, name, value)

        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            hyper = {**spec.defaults(), **{n: _number(getattr(self, n)) for n in own}}
            initial = float(spec.slot_init(hyper))
            starts = {s.name: s.from_param for s in spec.slot_decls}
            for slot, attribute in state_attributes(spec).items():
                made = self.add_optimizer_variables(
                    variables, slot, initializer=keras.initializers.Constant(initial))
                if starts[slot]:  # a slot that starts as the param (schedule-free's z)
                    for variable, state in zip(variables, made):
                        state.assign(variable)
                setattr(self, attribute, made)

        def get_config(self):
            config = super().get_config()
            config.update({n: _number(getattr(self, n)) for n in own})
            return config

    namespace = {"__Base": keras.optimizers.Optimizer, "__defaults": defaults}
    exec(compile(text, f"<fusedopt.keras.{spec.class_name}.__init__>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{spec.class_name}.__init__"
    Base.__init__ = init
    Base.__name__ = Base.__qualname__ = spec.class_name
    return Base


def _tensor_types() -> tuple:
    import torch
    return (torch.Tensor,)


def _number(value):
    """A config value: the number a variable or a one-element tensor holds."""
    if isinstance(value, keras.Variable):
        value = value.value
    if hasattr(value, "numel") and value.numel() == 1:
        return value.item()
    return value
