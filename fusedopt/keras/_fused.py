"""What every ``fusedopt.keras`` optimizer shares: a Keras optimizer whose update is fusedopt's.

Each class is Keras' own optimizer class (``keras.optimizers.Adam`` & co) with this mixin in
front, so its arguments, defaults, validation, ``get_config()``, variables (their names, order
and layout, hence ``model.save`` / ``load_model``), learning-rate schedules, gradient
accumulation, ``loss_scale_factor``, EMA and ``LossScaleOptimizer`` support are Keras' code.
Only the update is replaced. Keras' ``BaseOptimizer.apply`` runs, per step:

    filter None grads -> divide by loss_scale_factor -> _backend_apply_gradients:
        [gradient accumulation] -> _clip_gradients -> _apply_weight_decay
        -> _backend_update_step(grads, variables, learning_rate) -> [EMA]
    -> iterations += 1

Here ``_backend_update_step`` is one :meth:`fusedopt.engine.engine.Engine.step` over the whole list
(one fused call per dtype group); clipping and decoupled weight decay move into that same
pass (inside ``apply``, ``_clip_gradients`` and ``_apply_weight_decay`` return at once;
called on their own, they are Keras'), and the optimizer's state arrays are the torch
tensors of the Keras variables its ``build()`` made, updated in place. With ``use_ema`` on
CPU the moving averages Keras made are the engine's (fusedopt/engine/ema.py), updated in the
same pass, so Keras' ``[EMA]`` step only updates the averages of variables the engine does
not step; on CUDA, and under ``gradient_accumulation_steps`` (where Keras moves the averages
on every call, update or not), Keras keeps its own EMA step. ``stateless_apply`` runs the
fused step on copies (fusedopt/keras/_stateless.py). Keras' per-variable ``update_step`` is
never called; if a Keras version called it (its hooks renamed), it raises instead of
silently running Keras' math.

Pure bfloat16 training: ``stochastic_rounding=True`` (keyed on ``seed``) or
``kahan_summation=True`` (one more optimizer variable per bfloat16 variable, its
compensation) puts the bfloat16 variables in an engine group of their own, with that
rounding; float32 variables stay in the plain group.

The engine needs ``iterations`` and the learning rate on the host: they are read through
:class:`~fusedopt.keras._host_values.HostValue`, once, and then only when the variable changed,
so a step on CUDA waits for the device no more than Keras' own step does.
"""

from __future__ import annotations

import keras

from ..algorithms.registry import lookup
from ..engine.clip import NONE, Clipping
from ..engine.ema import MovingAverage
from ..engine.engine import Engine
from ..memory.storage import MIN_QUANTIZED_SIZE
from . import _stateless
from ._factored import engine_slots
from ._host_values import HostValue, host_number
from ._quantized import QuantizedState
from ._rounding import Rounding
from ._routes import Route

#: In the config of an optimizer with options Keras' class lacks: what loading it takes.
REQUIRES = "import fusedopt.keras"

#: Backends a Keras optimizer can ask for: torch CPU tensors go to the Numba backend, CUDA
#: tensors to the CUDA kernels ("auto" picks by the variables' device).
BACKENDS = ("auto", "cpu", "cuda")


def require_torch_backend(class_name: str) -> None:
    """Raise unless Keras runs on torch: fusedopt updates the variables' torch tensors in place."""
    backend = keras.backend.backend()
    if backend != "torch":
        raise RuntimeError(
            f"fusedopt.keras.{class_name} needs Keras' torch backend: it updates each "
            f"variable's torch tensor in place, and this process runs Keras on {backend!r}, "
            f"whose variables it cannot update without copying them to the host. Set "
            f"KERAS_BACKEND=torch before keras is imported, or use "
            f"keras.optimizers.{class_name} on {backend!r}.")


class FusedOptimizer:
    """Mixin placed before a Keras optimizer class; subclasses name their registry entry.

    ``spec_name``: the fusedopt registry entry (fusedopt/algorithms/registry.py).
    ``state_attributes``: registry slot name -> the attribute of the Keras class that holds
    those variables after its ``build()`` (a list, one per trainable variable).
    """

    spec_name: str = ""
    state_attributes: dict = {}

    def __init__(self, *args, backend: str = "auto", stochastic_rounding: bool = False,
                 kahan_summation: bool = False, seed: int = 0, state_dtype=None,
                 min_quantized_size: int = MIN_QUANTIZED_SIZE, **kwargs):
        require_torch_backend(type(self).__name__)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        from ..memory import torch_kind as _torch_kind
        _torch_kind.register()  # the engine steps torch tensors in place
        rounding = Rounding(stochastic_rounding, kahan_summation, seed)  # checked first
        quantized = QuantizedState(type(self).__name__, state_dtype, min_quantized_size)
        super().__init__(*args, **kwargs)
        self._fused = self._fused_for(backend, rounding, quantized)

    def _fused_for(self, backend: str, rounding: Rounding, quantized: QuantizedState):
        """The engine that steps this optimizer's variables (a class with several routes
        returns one engine per route: fusedopt/keras/_routed.py)."""
        return _Fused(self, backend, rounding, quantized)

    # --- Keras' hooks -------------------------------------------------------------------------
    def build(self, variables):
        if self.built:
            return
        variables = list(variables)
        self._fused.rounding.check(type(self).__name__, variables)
        with self._fused.slot_variables(self):
            super().build(variables)
        if self._fused.rounding.kahan_summation:
            # One more optimizer variable per bfloat16 variable, saved and loaded with the
            # others: what each store rounded away, added back at the next step.
            self._compensations = [
                self.add_variable_from_reference(v, name="compensation")
                if v.dtype == "bfloat16" else None for v in variables]
        self._fused.add(self, variables, fresh=True)

    def apply(self, grads, trainable_variables=None):
        iterations = self._fused.iterations
        before = iterations.get()
        self._fused.applying = True  # the fused pass clips and decays: see _clip_gradients
        try:
            super().apply(grads, trainable_variables)
        finally:
            self._fused.applying = False
        iterations.wrote(before, before + 1)  # Keras' own iterations.assign_add(1)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._before_fused_update()
        if keras.src.backend.in_stateless_scope():  # stateless_apply: a step on copies
            return _stateless.step(self, grads, trainable_variables)
        self._fused.step(self, grads, trainable_variables)

    def _before_fused_update(self) -> None:
        """Keras variables of the optimizer itself that its update step advances (Nadam's)."""

    def _clip_gradients(self, grads):
        if self._fused.applying:  # apply(): clipped inside the fused pass (engine/clip.py)
            return grads
        return super()._clip_gradients(grads)  # called on its own: Keras' clipped grads

    def _apply_weight_decay(self, variables):
        if self._fused.applying:  # apply(): decoupled weight decay inside the fused pass
            return None
        return super()._apply_weight_decay(variables)

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self._fused.moves_averages or keras.src.backend.in_stateless_scope():
            # Keras' own (CUDA, gradient accumulation, stateless_apply)
            return super()._update_model_variables_moving_average(trainable_variables)
        # The engine's step updated the averages of every variable it holds; the others
        # (variables Keras assigns their gradient) as Keras does.
        from keras import ops
        for index in self._fused.unheld:
            variable = trainable_variables[index]
            average = self._model_variables_moving_average[index]
            if average is None:
                continue
            momentum = ops.multiply(ops.cast(ops.not_equal(self.iterations, 0), variable.dtype),
                                    self.ema_momentum)
            average.assign(ops.add(ops.multiply(momentum, average),
                                   ops.multiply(ops.subtract(1, momentum), variable)))

    def update_step(self, gradient, variable, learning_rate):
        raise RuntimeError(
            f"Keras called {type(self).__name__}.update_step (one variable at a time): this "
            f"Keras {keras.__version__} no longer routes the update through "
            "_backend_update_step, which fusedopt.keras replaces; use keras.optimizers."
            f"{type(self).__name__} with this Keras version")

    def _backend_reset_gradient_accumulators(self):
        if keras.src.backend.in_stateless_scope():  # Keras' assign: values, not in place
            return super()._backend_reset_gradient_accumulators()
        import torch
        with torch.no_grad():
            torch._foreach_zero_([a.value for a in self._accumulated_gradients
                                  if a is not None])

    def _backend_increment_gradient_accumulators(self, grads, acc_grads):
        if keras.src.backend.in_stateless_scope():
            return super()._backend_increment_gradient_accumulators(grads, acc_grads)
        import torch
        with torch.no_grad():
            torch._foreach_add_([a.value for a in acc_grads], list(grads))

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        if self.built:
            raise ValueError(f"exclude_from_weight_decay() must be called before "
                             f"{type(self).__name__} is built: its fused step fixed which "
                             "variables decay when it was built (call it before fit/apply)")
        super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    def get_config(self):
        own = {"backend": self._fused.backend} if self._fused.backend != "auto" else {}
        own.update(self._fused.rounding.config())
        own.update(self._fused.quantized.config())
        if own:  # options Keras' class lacks: loading the saved model takes fusedopt, and
            own["requires"] = REQUIRES  # Keras' error for a class it cannot find prints this
        return {**super().get_config(), **own}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(
            {k: v for k, v in config.items() if k != "requires"}, custom_objects)


class _Fused:
    """The engine of one Keras optimizer and the host copies its steps read."""

    def __init__(self, optimizer, backend: str, rounding: Rounding,
                 quantized: QuantizedState, route: Route | None = None):
        self.backend = backend
        self.rounding = rounding
        self.quantized = quantized
        # What it steps and how it reads its hyperparameters (fusedopt/keras/_routes.py)
        self.route = route or Route(optimizer.spec_name, type(optimizer).state_attributes)
        self.spec = lookup(self.route.spec_name)
        self.iterations = HostValue(optimizer._iterations, lambda t: int(t))
        self._rate: HostValue | None = None  # the learning-rate variable's host copy
        self._numbers: dict = {}  # host copies of hyperparameters given as tensors
        # Keras makes the optimizer's variables in each variable's dtype: bfloat16 variables
        # (a "bfloat16" dtype policy) get bfloat16 moments, which the engine steps in place.
        self.engine = Engine(self.spec, "keras", backend=backend,
                             clipping=self._clipping(optimizer), seed=rounding.seed,
                             **quantized.engine_options())
        self.hyper = self._hyper(optimizer)
        where = f"{type(optimizer).__name__}: "
        names = self.route.names
        self.engine.add_group(self.hyper, where=where, names=names)  # group 0: plain stores
        if rounding.active:  # group 1: the bfloat16 variables, rounded as asked
            self.engine.add_group(self.hyper, where=where, master_weights=False,
                                  names=names, **rounding.options())
        self.position: dict[int, int] = {}  # Keras' variable index -> engine position
        self.tensors: list = []             # engine position -> the variable's own tensor
        self.unheld: list[int] = []         # Keras' indices of variables it does not step
        self.applying = False               # inside apply(): the fused pass clips and decays

    @property
    def lanes(self) -> tuple:
        """The engines of the optimizer, each with its route: this one."""
        return (self,)

    @property
    def moves_averages(self) -> bool:
        """use_ema: the step moves Keras' moving averages (see ``add``)."""
        return self.engine.ema is not None

    def slot_variables(self, optimizer):
        """Within it, Keras' ``build()`` makes the state variables as the engine keeps them."""
        return self.quantized.slots(optimizer, self.engine, self.group_of)

    def group_of(self, variable) -> int:
        """The engine group of a model variable: 1 for a bfloat16 one that rounds as asked."""
        return int(self.rounding.active and variable.dtype == "bfloat16")

    # --- what Keras holds, as the engine takes it ---------------------------------------------
    def _clipping(self, optimizer) -> Clipping:
        def positive(value):  # Keras clips only for a value > 0
            return value if value and value > 0 else None
        whole = self.route.clips_globally  # else Keras clipped by the norm of every grad
        return Clipping(clipnorm=positive(optimizer.clipnorm),
                        global_clipnorm=positive(optimizer.global_clipnorm) if whole else None,
                        clipvalue=positive(optimizer.clipvalue))

    def _learning_rate(self, optimizer) -> float:
        from keras.optimizers.schedules import LearningRateSchedule

        rate = optimizer._learning_rate
        if isinstance(rate, keras.Variable):
            if self._rate is None or self._rate.variable is not rate:
                self._rate = HostValue(rate, lambda t: float(t))
            return self._rate.get()
        if isinstance(rate, LearningRateSchedule):
            # Keras evaluates it at the raw step count on the device; here on the host copy
            # of that count, with host tensors, so reading the result waits for nothing.
            with keras.device("cpu"):
                return float(rate(self.iterations.get()))
        if callable(rate):
            return float(rate())
        return float(rate)

    def _hyper(self, optimizer, learning_rate=None) -> dict:
        """The engine's hyperparameters; with ``learning_rate`` (Keras' ``update_step``
        called on its own), that one and no weight decay."""
        values = {n: host_number(n, getattr(optimizer, n), self._numbers)
                  for n in self.route.reads if n != "learning_rate"}
        values["learning_rate"] = (self._learning_rate(optimizer) if learning_rate is None
                                   else host_number("learning_rate", learning_rate, {}))
        return self.route.hyper(optimizer, values, decay=learning_rate is None)

    def add(self, optimizer, variables: list, ema: bool = True, fresh: bool = False) -> None:
        """Hand Keras' variables and the state variables its build() made to the engine
        (``ema=False``: leave the moving averages to Keras' EMA step; ``fresh``: the state
        variables were just made, and quantized ones get their initial blocks)."""
        names = [self.route.state_attributes[s] for s in self.engine.hypers[0].slots]
        missing = [n for n in names if not hasattr(optimizer, n)]
        if missing:
            raise RuntimeError(f"{type(optimizer).__name__}: this Keras {keras.__version__} "
                               f"builds no {', '.join(missing)}; fusedopt.keras expects "
                               "Keras 3.10 or later's optimizer variables")
        lists = [getattr(optimizer, n) for n in names]
        # use_ema: on the CPU the step moves Keras' averages in its own pass. Not under
        # gradient accumulation (Keras moves them on every call, update or not), nor on
        # CUDA (where the engine's would be a pass like Keras' own): there Keras' EMA step.
        averages = None
        if (ema and optimizer.use_ema and not optimizer.gradient_accumulation_steps
                and self.backend != "cuda"
                and all(v.value.device.type == "cpu" for v in variables)):
            self.engine.ema = MovingAverage(optimizer.ema_momentum)
            averages = optimizer._model_variables_moving_average
        # Per engine group (1: the bfloat16 variables, where stores round as asked):
        # params, tensors, states, decays, Keras' indices, averages.
        groups = {0: ([], [], [], [], [], []), 1: ([], [], [], [], [], [])}
        for index, variable in enumerate(variables):
            if not self.route.holds(optimizer, variable):  # another route's
                continue
            own = [slot_list[index] for slot_list in lists]
            if any(s is None for s in own):  # overwrite_with_gradient: Keras assigns the grad
                self.unheld.append(index)
                continue
            rounded = self.group_of(variable)
            if rounded and self.rounding.kahan_summation:  # the master slot, last
                own.append(optimizer._compensations[index])
            params, tensors, states, decays, indices, group_averages = groups[int(rounded)]
            if variable.dtype == "float16":
                raise TypeError(
                    f"{type(optimizer).__name__}: variable {variable.path!r} is float16, and "
                    "Keras keeps its optimizer state in float16, which fusedopt does not "
                    "step (float16 moments underflow: (1 - beta_2) g**2 is 0 below |g| ~ 5e-3); "
                    "use the 'mixed_float16' policy (float32 variables, float16 compute) or "
                    "bfloat16 variables")
            # The engine gets plain tensors on the variables' memory (detach() shares it): a
            # grad then has its param's type, and the step takes the engine's fast checks.
            tensors.append(variable.value)
            params.append(variable.value.detach())
            values = [s.value.detach() for s in own]
            if self.engine.spec.factored is not None:  # Adafactor: Keras' shapes, viewed
                values = engine_slots(self.engine.spec, self.engine.hypers[0].slots, values,
                                      variable.value)
            states.append(values)
            if fresh and any(s.dtype == "uint8" for s in own):  # quantized: initial blocks
                self.quantized.fill(self.engine, params[-1], int(rounded), own)
            decays.append(optimizer._use_weight_decay(variable))
            indices.append(index)
            if averages is not None:
                group_averages.append(averages[index].value.detach())
        for group, (params, tensors, states, decays, indices, group_averages) in groups.items():
            if params:
                positions = self.engine.add_params(
                    params, group, decays, states=states,
                    averages=group_averages if averages is not None else None)
                self.position.update(zip(indices, positions))
                self.tensors.extend(tensors)

    # --- one step ------------------------------------------------------------------------------
    def step(self, optimizer, grads, variables, learning_rate=None) -> None:
        """One step of ``variables``; with ``learning_rate``, Keras' ``update_step`` called
        on its own: that learning rate, no clipping and no weight decay."""
        self.engine.step(*self.prepare(optimizer, grads, variables, learning_rate))

    def prepare(self, optimizer, grads, variables, learning_rate=None) -> tuple:
        """The step's hyperparameters, clipping and count set and checked: the engine's
        ``(grads, positions)``."""
        from torch import Tensor
        engine = self.engine
        hyper = self._hyper(optimizer, learning_rate)
        if hyper != self.hyper:
            for group in range(len(engine.hypers)):
                engine.set_hyper(group, hyper, where=f"{type(optimizer).__name__}: ",
                                 names=self.route.names)
            self.hyper = hyper
        clipping = self._clipping(optimizer) if learning_rate is None else NONE
        if clipping != engine.clipping:
            engine.clipping = clipping
        steps = optimizer.gradient_accumulation_steps
        count = self.iterations.get()
        engine.iterations = count // steps if steps else count
        positions, arrays = [], []
        for grad, variable in zip(grads, variables):
            position = self.position[optimizer._get_variable_index(variable)]
            tensor = self.tensors[position]
            if variable._value is not tensor:  # the attribute: .value adds autocast checks
                raise RuntimeError(f"variable {variable.path!r} holds a new tensor since "
                                   f"{type(optimizer).__name__} was built; an optimizer "
                                   "updates the tensors it was built with (make a new one)")
            if not isinstance(grad, Tensor):  # NumPy's or a list, as Keras' ops take them
                grad = keras.ops.convert_to_tensor(grad).to(tensor.device)
            if grad.dtype != tensor.dtype:  # as Keras' update_step casts the gradient
                grad = grad.to(tensor.dtype)
            positions.append(position)
            arrays.append(grad)
        return arrays, positions
