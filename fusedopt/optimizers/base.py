"""The optimizer machinery every public class shares: Keras-style API, state, config.

No math and no backend code here: the registry entry says what the optimizer is, the
backends do the work.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .. import _step
from .._clip import Clipping, step_groups
from .._dispatch import BACKENDS
from .._registry import CONVENTIONS, OptimizerSpec, lookup

#: Keras arguments fusedopt accepts only at their default (Keras' get_config reports them).
_KERAS_FIXED = {
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


def _host(array) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.array(array, copy=True)


def _copy_into(dst, src) -> None:
    """Copy ``src`` (NumPy or CuPy) into ``dst`` in place, across devices if need be."""
    if isinstance(dst, np.ndarray):
        dst[...] = _host(src)
    else:
        dst.set(_host(src).astype(dst.dtype, copy=False))


class Optimizer:
    """Base class: ``apply_gradients`` updates NumPy or CuPy params in place, fused.

    Subclasses set ``spec_name`` and spell out their hyperparameters in ``__init__``.
    """

    spec_name: str = ""

    def __init__(self, *, name=None, convention="keras", backend="auto", clipnorm=None,
                 clipvalue=None, global_clipnorm=None, **hyper):
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
        for h in spec.hypers:
            value = hyper.get(h.name, h.default)
            h.validate(value)
            if convention not in h.conventions and value != h.default:
                raise ValueError(f"{h.name} exists only in the {'/'.join(sorted(h.conventions))}"
                                 f" convention; drop it or use convention="
                                 f"{sorted(h.conventions)[0]!r}")
            hyper[h.name] = value
        spec.check(hyper, convention)
        self._clipping = Clipping(clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                                  clipvalue=clipvalue)
        self.hyper: dict[str, Any] = hyper
        self.name = name if name is not None else spec.keras_name
        self.convention = convention
        self.backend = backend
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.flags = spec.flags(hyper, convention)
        self.slot_names = spec.slots(self.flags)
        self.iterations = 0
        self._params: list = []           # position -> param, in build order
        self._index: dict[int, int] = {}  # id(param) -> position
        self._state: list[list] = []      # position -> slot arrays
        self._groups: dict = {}           # (backend, dtype, positions) -> Group
        self._pending_state = None

    @property
    def learning_rate(self):
        return self.hyper["learning_rate"]

    def _current(self, key: str) -> float:
        value = self.hyper[key]
        return float(value(self.iterations)) if callable(value) else value

    # --- state ------------------------------------------------------------------------------
    def build(self, var_list: Iterable) -> None:
        """Create state for ``var_list`` (positions follow its order). Called on first use."""
        var_list = list(var_list)
        if self._params:
            raise RuntimeError(f"{self.name} is already built for {len(self._params)} params")
        for i, p in enumerate(var_list):
            _step.check_pair(i, p, p, self._spec)
        backend = _step.resolve_backend(self.backend, var_list, var_list)
        init = self._spec.slot_init(self.hyper)
        self._params = var_list
        self._index = {id(p): i for i, p in enumerate(var_list)}
        self._state = [[backend.zeros(p, init) for _ in self.slot_names] for p in var_list]
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)

    @property
    def variables(self) -> list:
        """Every state array, position by position (Keras' ``optimizer.variables``)."""
        return [s for slots in self._state for s in slots]

    def state(self, param) -> dict:
        """The state arrays of ``param`` by slot name (views: writing them changes the state)."""
        return dict(zip(self.slot_names, self._state[self._position(param)]))

    def _position(self, param) -> int:
        try:
            return self._index[id(param)]
        except KeyError:
            raise KeyError(f"{self.name} was built for {len(self._params)} params and this "
                           f"{type(param).__name__} of shape {tuple(param.shape)} is not one of "
                           "them; an optimizer updates only the params it was first "
                           "called with (make a new optimizer for others)") from None

    def state_dict(self) -> dict:
        """Iterations, config and copies of every state array, keyed by param position."""
        return {
            "iterations": self.iterations,
            "config": self.get_config(),
            "state": {i: {n: _host(s) for n, s in zip(self.slot_names, slots)}
                      for i, slots in enumerate(self._state)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved; state is copied into the existing arrays.

        Before the optimizer is built the state is held and applied when it is.
        """
        if not self._params:
            self._pending_state = state
            self.iterations = int(state["iterations"])
            return
        saved = state["state"]
        if len(saved) != len(self._params):
            raise ValueError(f"the state holds {len(saved)} params, {self.name} has "
                             f"{len(self._params)}")
        for i, slots in enumerate(self._state):
            entry = saved.get(i, saved.get(str(i)))
            if entry is None or set(entry) != set(self.slot_names):
                raise ValueError(f"param {i}: saved slots {sorted(entry or {})} differ from "
                                 f"{list(self.slot_names)} (was amsgrad or the optimizer "
                                 "changed?)")
            for name, s in zip(self.slot_names, slots):
                if tuple(np.shape(entry[name])) != tuple(s.shape):
                    raise ValueError(f"param {i}: saved {name!r} has shape "
                                     f"{tuple(np.shape(entry[name]))}, the param has "
                                     f"{tuple(s.shape)}")
        for i, slots in enumerate(self._state):
            entry = saved.get(i, saved.get(str(i)))
            for name, s in zip(self.slot_names, slots):
                _copy_into(s, entry[name])
        self.iterations = int(state["iterations"])

    # --- the step ---------------------------------------------------------------------------
    def apply_gradients(self, grads_and_vars) -> int:
        """Apply one step to every (grad, param) pair, in place; returns ``iterations``.

        Pairs whose grad is None are skipped. All pairs are validated before any param
        changes. The first call builds state for its params; later calls may pass any
        subset of them.
        """
        pairs = [(g, p) for g, p in grads_and_vars]
        if not pairs:
            raise ValueError("apply_gradients got no (grad, param) pairs")
        live = [(g, p) for g, p in pairs if g is not None]
        if not live:
            raise ValueError("every gradient is None: nothing to apply")
        if not self._params:
            self._validate(live, positions=list(range(len(pairs))))
            self.build([p for _, p in pairs])
        positions = [self._position(p) for _, p in live]
        if len(set(positions)) != len(positions):
            raise ValueError("a param appears twice in one apply_gradients call")
        grads = self._validate(live, positions)
        backend = _step.resolve_backend(self.backend, [p for _, p in live], grads, positions)
        self._step(backend, positions, grads)
        self.iterations += 1
        return self.iterations

    def _validate(self, live, positions):
        for pos, (g, p) in zip(positions, live):
            _step.check_pair(pos, p, g, self._spec)
        return [_step.contiguous(g) for g, _ in live]

    def _groups_for(self, backend, positions):
        key = (backend.name, tuple(positions))
        groups = self._groups.get(key)
        if groups is None:
            by_dtype: dict[str, list[int]] = {}
            for pos in positions:
                by_dtype.setdefault(np.dtype(self._params[pos].dtype).name, []).append(pos)
            groups = [(members, backend.group(dtype, [self._params[i] for i in members],
                                              [self._state[i] for i in members]))
                      for dtype, members in by_dtype.items()]
            groups = [([positions.index(i) for i in members], g) for members, g in groups]
            self._groups[key] = groups
        return groups

    def _step(self, backend, positions, grads) -> None:
        hp = dict(self.hyper, learning_rate=self._current("learning_rate"))
        scalars = self._spec.scalars(hp, self.iterations + 1, self.convention)
        groups = self._groups_for(backend, positions)
        step_groups(backend, self._spec, self.flags, scalars, [g for _, g in groups],
                    [[grads[i] for i in members] for members, _ in groups], self._clipping)

    # --- config -----------------------------------------------------------------------------
    def get_config(self) -> dict:
        """The keys Keras returns for this optimizer (plus convention/backend when not default)."""
        cfg = {"name": self.name, "learning_rate": self.hyper["learning_rate"],
               "weight_decay": self.hyper.get("weight_decay"), "clipnorm": self.clipnorm,
               "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue,
               **_KERAS_FIXED}
        # A hyperparameter of the other convention only (always at its default here) is left
        # out, so the keys stay those of the real library.
        hidden = {h.name for h in self._spec.hypers if self.convention not in h.conventions}
        cfg.update({k: v for k, v in self.hyper.items() if k not in cfg and k not in hidden})
        if self.convention != "keras":
            cfg["convention"] = self.convention
        if self.backend != "auto":
            cfg["backend"] = self.backend
        return cfg

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({args}, convention={self.convention!r})"
