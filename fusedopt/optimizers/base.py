"""The optimizer machinery every public class shares: Keras-style API, state, config.

No math and no backend code here: the registry entry says what the optimizer is, the
backends do the work.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from .. import checkpoint
from ..algorithms.registry import CONVENTIONS, OptimizerSpec, lookup
from ..engine import modes
from ..engine import validate as _validate
from ..engine.clip import Clipping
from ..engine.dispatch import BACKENDS
from ..engine.ema import MovingAverage, overwrite
from ..engine.engine import Engine
from ..flat import FlatParams
from ..memory.quant import MIN_QUANTIZED_SIZE
from .state import Checkpoints

#: Keras arguments fusedopt accepts only at their default (Keras' get_config reports them).
_KERAS_FIXED = {
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


class Optimizer(Checkpoints):
    """Base class: ``apply_gradients`` updates NumPy or CuPy params in place, fused.

    Subclasses set ``spec_name`` and spell out their hyperparameters in ``__init__``; the
    storage arguments every optimizer takes reach this class through ``**kwargs``:

    - ``state_dtype``: dtype of the state slots: None (float32 for float16/bfloat16 params,
      the param's dtype otherwise), "float32" or "bfloat16" (16-bit and float32 params),
      "float64" (float64 params), or "param" (the param's dtype; float32 for float16).
      Rounded to nearest even once per step. "q8" or "q4": every slot blockwise quantized
      to 8 or 4 bits (fusedopt/memory/quant.py; float32, bfloat16 and float16 params, CPU
      backend; q8 with the power map, q4 with the dynamic one, "q8-dynamic" and "q4-power"
      the other map), params below ``min_quantized_size`` elements keeping float32 state, and so
      does a slot that is a point of the param space (schedule-free's z: only its AdamW's
      v is quantized, and its SGD's state stays float32).
    - ``min_quantized_size``: with quantized state, params with fewer elements keep float32
      state. 4096 (bitsandbytes' ``min_8bit_size``).
    - ``master_weights``: False, True (an fp32 master of each 16-bit param in the state, slot
      "master", updated in the same pass; the param is written from it, rounded to nearest)
      or "remainder" (bfloat16 params: an int16 slot "remainder" that with the param is the
      fp32 master bit for bit, 2 bytes instead of 4). False.
    - ``stochastic_rounding``: round every 16-bit store (bfloat16/float16 params without a
      master, bfloat16 state) up or down with probability proportional to the distance,
      so that updates below half an ulp still move the param on average. False.
    - ``kahan_summation``: a compensation slot in the param's dtype (16-bit params, no
      master) keeps what each store rounded away and adds it back at the next step. False.
    - ``seed``: the key, with the step, the param's position, the element's index and the
      array, of stochastic rounding's random bits: a run is reproducible bit for bit on
      every backend, and a resumed run (its state_dict carries the seed and the step)
      continues the same stream. 0.
    """

    spec_name: str = ""

    def __init__(self, *, name=None, convention="keras", backend="auto", clipnorm=None,
                 clipvalue=None, global_clipnorm=None, state_dtype=None, master_weights=False,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 stochastic_rounding=False, kahan_summation=False, seed=0,
                 min_quantized_size=MIN_QUANTIZED_SIZE, **hyper):
        spec = lookup(self.spec_name)
        self._spec: OptimizerSpec = spec
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, "
                             f"got {convention!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        for key, default in _KERAS_FIXED.items():
            value = hyper.pop(key, default)
            if value != default:
                raise ValueError(f"{key}={value!r} is not supported by fusedopt; leave it at "
                                 f"{default!r}")
        known = {h.name for h in spec.hypers}
        unknown = set(hyper) - known
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments "
                            f"{sorted(unknown)}; it takes {sorted(known)}")
        self._clipping = Clipping(clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                                  clipvalue=clipvalue)
        if not isinstance(use_ema, bool):
            raise ValueError(f"use_ema must be True or False, got {use_ema!r}")
        # Keras' moving average of the weights (fusedopt/engine/ema.py), after each fused step.
        ema = MovingAverage(ema_momentum, ema_overwrite_frequency) if use_ema else None
        self.use_ema, self.ema_momentum = use_ema, ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self._engine = Engine(spec, convention, backend=backend, clipping=self._clipping,
                              state_dtype=state_dtype, master_weights=master_weights, ema=ema,
                              stochastic_rounding=stochastic_rounding,
                              kahan_summation=kahan_summation, seed=seed,
                              min_quantized_size=min_quantized_size)
        self.state_dtype, self.master_weights = state_dtype, master_weights
        self.min_quantized_size = self._engine.min_quantized_size
        self.stochastic_rounding, self.kahan_summation = stochastic_rounding, kahan_summation
        group = self._engine.hypers[self._engine.add_group(hyper, where="")]
        self.hyper: dict[str, Any] = group.hyper
        self.name = name if name is not None else spec.keras_name
        self.convention = convention
        self.backend = backend
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.flags = group.flags
        self.slot_names = group.slots
        self._exclude_vars: list = []     # exclude_from_weight_decay(var_list=...)
        self._exclude_pattern = None      # exclude_from_weight_decay(var_names=...)
        self._pending_state = None

    @property
    def iterations(self) -> int:
        """Steps applied so far (Keras' ``optimizer.iterations``)."""
        return self._engine.iterations

    @iterations.setter
    def iterations(self, value: int) -> None:
        self._engine.iterations = int(value)

    @property
    def found_inf(self) -> bool:
        """The last ``apply_gradients(..., grad_scale=s)`` found an inf or NaN grad and
        changed nothing. On CUDA, reading it waits for the device's flag of that step."""
        return self._engine.found_inf

    @property
    def seed(self) -> int:
        """The seed of stochastic rounding's random bits."""
        return self._engine.seed

    @property
    def _params(self) -> list:
        return self._engine.params

    @property
    def learning_rate(self):
        return self.hyper["learning_rate"]

    # --- weight decay exclusions ------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Exempt some params from weight decay, as Keras' method of the same name.

        ``var_list``: params (the arrays themselves) that get no weight decay.
        ``var_names``: regular expressions searched in each param's name; a param matching
        any of them gets no weight decay. NumPy and CuPy arrays have no names: names come
        from :class:`fusedopt.FlatParams` (its keys) or from a ``name`` attribute. Call it
        before the first step. An excluded param is updated exactly as with
        ``weight_decay=None``; the others as configured.
        """
        if self._params:
            raise ValueError("exclude_from_weight_decay() can only be configured before the "
                             f"optimizer is built; {self.name} already holds state for "
                             f"{len(self._params)} params, so call it before the first step")
        names = list(var_names or ())
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"var_names must be strings, got {n!r}")
        self._exclude_vars = list(var_list or ())  # held: they are matched by identity
        self._exclude_pattern = re.compile("|".join(sorted(set(names)))) if names else None

    def _uses_weight_decay(self, var, name=None) -> bool:
        """False when ``var`` (named ``name``) was excluded from weight decay."""
        if any(var is v for v in self._exclude_vars):
            return False
        name = getattr(var, "name", None) if name is None else name
        return not (self._exclude_pattern is not None and isinstance(name, str)
                    and self._exclude_pattern.search(name))

    # --- state ------------------------------------------------------------------------------
    def build(self, var_list: Iterable) -> None:
        """Create state for ``var_list`` (positions follow its order). Called on first use."""
        var_list = list(var_list)
        self._build(var_list, [self._uses_weight_decay(p) for p in var_list])

    def _build(self, var_list: list, decays: list) -> None:
        if self._params:
            raise RuntimeError(f"{self.name} is already built for {len(self._params)} params")
        pending = self._pending_state
        if isinstance(pending, checkpoint.Pending):  # checked before anything is built
            decays = pending.decays(decays)
            pending.check(self, var_list, decays)
        self._engine.add_params(var_list, 0, decays)
        if pending is None:
            return
        if isinstance(pending, checkpoint.Pending):
            try:
                pending.check_states(self)
            except checkpoint.CheckpointMismatch:
                self._engine.forget_params()
                raise
            self._pending_state = None
            pending.apply(self)
        else:
            self._pending_state = None
            self.load_state_dict(pending)

    def bind(self, var_list: Iterable) -> None:
        """Update ``var_list`` from now on: builds the optimizer if it is not built yet, else
        puts these arrays in the places of the params it holds, keeping its state.

        A copy made by ``pickle`` or ``copy.deepcopy`` holds copies of the params (unless
        they were copied together with it, e.g. ``copy.deepcopy((opt, params))``); ``bind``
        points it at the arrays to update. Each must match the param it replaces in shape,
        dtype and memory order.
        """
        var_list = list(var_list)
        if not self._params:
            self.build(var_list)
        else:
            self._engine.bind(var_list)

    # --- copies: pickle and copy.deepcopy ---------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_spec"] = self._spec.name  # the spec holds functions: found again by name
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._spec = lookup(state["_spec"])

    @property
    def variables(self) -> list:
        """Every state array, position by position (Keras' ``optimizer.variables``), then
        the moving averages with ``use_ema``."""
        return [s for slots in self._engine.states for s in slots] + self._engine.averages

    def moving_average(self, param):
        """``param``'s moving average (``use_ema=True``): the array itself."""
        if not self.use_ema:
            raise ValueError(f"{self.name} keeps no moving average: pass use_ema=True")
        return self._engine.averages[self._position(param)]

    def finalize_variable_values(self, var_list=None) -> None:
        """With ``use_ema``, overwrite every param with its moving average (Keras calls this
        after the last epoch of ``fit``); without it, nothing. ``var_list`` is accepted for
        Keras' signature: the params are the ones this optimizer holds."""
        if self.use_ema:
            overwrite(self._engine.params, self._engine.averages)

    def eval(self) -> None:
        """Schedule-free: move the params to the point to evaluate (x), one fused pass per
        dtype; steps are refused until :meth:`train`. Nothing happens if already there."""
        modes.switch(self._engine, True)

    def train(self) -> None:
        """Schedule-free: move the params back to the training point (y), bit for bit as
        they were before :meth:`eval`."""
        modes.switch(self._engine, False)

    def state(self, param) -> dict:
        """The state arrays of ``param`` by slot name (views: writing them changes the state)."""
        return self._engine.state(self._position(param))

    def _position(self, param) -> int:
        position = self._engine.position(param)
        if position is None:
            raise KeyError(f"{self.name} was built for {len(self._params)} params and this "
                           f"{type(param).__name__} of shape {tuple(param.shape)} is not one of "
                           "them; an optimizer updates only the params it was first "
                           "called with (make a new optimizer for others)")
        return position

    def apply_gradients(self, grads_and_vars, grad_scale=None):
        """Apply one step to every (grad, param) pair, in place; returns ``iterations``.

        Pairs whose grad is None are skipped. All pairs are validated before any param
        changes. The first call builds state for its params; later calls may pass any
        subset of them. A :class:`fusedopt.FlatParams` arena may be passed instead of
        pairs: its grad buffer is applied to its params in one call per dtype.

        ``grad_scale=s``: the grads are those of a loss multiplied by ``s`` (a number, or a
        0-d array on the params' device); they are divided by ``s`` inside the fused pass.
        If any grad element of the call is inf or NaN, nothing changes - no param, no
        state, not ``iterations`` - and ``found_inf`` is True. The check is a read of the
        grads only (the pass clipping by norm uses). On CUDA it is decided on the device
        and nothing waits for the host (fusedopt/engine/engine.py): the returned count and
        ``found_inf`` then wait for the device only when read.
        """
        if isinstance(grads_and_vars, FlatParams):
            if self._spec.reductions is not None:
                raise ValueError(
                    f"{type(self).__name__} takes per-tensor norms, and a FlatParams arena is "
                    f"stepped as one tensor per dtype: pass its tensors as (grad, param) "
                    f"pairs instead, zip(arena.grads.values(), arena.params.values())")
            return grads_and_vars.step(self, grad_scale=grad_scale)
        pairs = [(g, p) for g, p in grads_and_vars]
        if not pairs:
            raise ValueError("apply_gradients got no (grad, param) pairs")
        live = [(g, p) for g, p in pairs if g is not None]
        if not live:
            raise ValueError("every gradient is None: nothing to apply")
        if not self._params:
            for i, (g, p) in enumerate(pairs):  # every pair checked before state is made
                if g is not None:
                    _validate.check_pair(i, p, p, self._spec)
                    mode = self._engine.storage_of(i, p).mode
                    _validate.check_pair(i, p, g, self._spec, mode=mode)
            self.build([p for _, p in pairs])
        index = self._engine.position
        positions = [index(p) for _, p in live]
        if None in positions:
            self._position(live[positions.index(None)][1])  # raises, naming the param
        if len(set(positions)) != len(positions):
            raise ValueError("a param appears twice in one apply_gradients call")
        self._engine.step([g for g, _ in live], positions, grad_scale=grad_scale)
        if self._engine.pending():
            return _Count(self._engine)
        return self.iterations

    # --- config -----------------------------------------------------------------------------
    def get_config(self) -> dict:
        """The keys Keras returns for this optimizer (plus convention/backend when not default)."""
        cfg = {"name": self.name, "learning_rate": self.hyper["learning_rate"],
               "weight_decay": self.hyper.get("weight_decay"), "clipnorm": self.clipnorm,
               "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue,
               "use_ema": self.use_ema, "ema_momentum": self.ema_momentum,
               "ema_overwrite_frequency": self.ema_overwrite_frequency, **_KERAS_FIXED}
        if "weight_decay" not in self.hyper:  # an optimizer without (schedule-free's switch)
            del cfg["weight_decay"]
        # A hyperparameter of the other convention only (always at its default here) is left
        # out, so the keys stay those of the real library.
        hidden = {h.name for h in self._spec.hypers if self.convention not in h.conventions}
        cfg.update({k: v for k, v in self.hyper.items() if k not in cfg and k not in hidden})
        if self.convention != "keras":
            cfg["convention"] = self.convention
        if self.backend != "auto":
            cfg["backend"] = self.backend
        if self.state_dtype is not None:
            cfg["state_dtype"] = self.state_dtype
        if self.min_quantized_size != MIN_QUANTIZED_SIZE:
            cfg["min_quantized_size"] = self.min_quantized_size
        if self.master_weights is not False:
            cfg["master_weights"] = self.master_weights
        if self.stochastic_rounding:
            cfg["stochastic_rounding"] = True
        if self.kahan_summation:
            cfg["kahan_summation"] = True
        if self.stochastic_rounding or self.seed != 0:
            cfg["seed"] = self.seed
        return cfg

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({args}, convention={self.convention!r})"


class _Count:
    """``iterations`` after a step still decided on the device: an int once read (reading
    it waits for the device), so a training loop that ignores it never waits."""

    __slots__ = ("_engine",)

    def __init__(self, engine):
        self._engine = engine

    def __int__(self) -> int:
        return self._engine.iterations

    __index__ = __int__

    def __eq__(self, other) -> bool:
        return int(self) == other

    def __lt__(self, other) -> bool:
        return int(self) < other

    def __hash__(self) -> int:
        return hash(int(self))

    def __repr__(self) -> str:
        return repr(int(self))
