"""Hyperparameter groups: each validated once, completed with the defaults, with the variant
flags and state slots it selects and the storage policy of its params. The one place a
hyperparameter is checked; errors start with the caller's ``where``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..memory import storage as _storage


@dataclass
class HyperGroup:
    """One set of hyperparameters (Keras names) and what they select."""

    hyper: dict
    flags: tuple
    slots: tuple
    maximize: bool = False  # grads enter the rules negated (a -1 in their grad scale)
    state_dtype: Any = None  # the storage policy of its params (fusedopt/memory/storage.py)
    mode: str = "plain"
    # The spec's running scalars (OptimizerSpec.running); None until a step of this engine
    # advanced them: the spec then takes them as if every earlier step had these hypers.
    running: dict | None = None



def _translate(hyper: Mapping[str, Any], names: Mapping[str, Any] | None):
    """``(values by registry name, registry name -> the door's name for it)``."""
    if names is None:
        return dict(hyper), {}
    values, door = {}, {}
    for key, value in hyper.items():
        target = names.get(key, key)
        if isinstance(target, tuple):  # one argument, several hyperparameters: a sequence
            for i, name in enumerate(target):
                values[name], door[name] = value[i], f"{key}[{i}]"
        else:
            values[target], door[target] = value, key
    return values, door


#: "the engine's own policy", for a group's storage arguments.
_ENGINE = object()


class HyperGroups:
    """The hyperparameter groups of an :class:`~fusedopt.engine.engine.Engine`."""

    # --- hyperparameter groups --------------------------------------------------------------
    def validate_hyper(self, hyper: Mapping[str, Any], where: str = "",
                       names: Mapping[str, Any] | None = None) -> HyperGroup:
        """``hyper`` completed with the defaults and checked: the one check of every
        hyperparameter, whatever the front door. ``names``: ``hyper`` is in a door's own
        argument names, each mapped to the registry's name (or to a tuple of names, for an
        argument that holds several: torch's ``betas``); it is translated here, once, and
        errors name the door's argument. Errors start with ``where``.

        Besides the registry's hyperparameters, every optimizer takes ``maximize`` (False)."""
        hyper, door = _translate(hyper, names)
        maximize = hyper.pop("maximize", False)
        if not isinstance(maximize, bool):
            raise ValueError(f"{where}maximize must be True or False, got {maximize!r}")
        known = {h.name for h in self.spec.hypers}
        unknown = set(hyper) - known
        if unknown:
            raise TypeError(f"{where}{self.spec.name} got unexpected arguments "
                            f"{sorted(door.get(k, k) for k in unknown)}; it takes "
                            f"{sorted(known)}")
        full = self.spec.defaults()
        full.update(hyper)
        try:
            for h in self.spec.hypers:
                h.validate(full[h.name], self.convention, door.get(h.name))
            self.spec.check(full, self.convention)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
        flags = tuple(self.spec.flags(full, self.convention))
        return HyperGroup(full, flags, tuple(self.spec.slots(flags)), maximize)

    def _check_quantizable(self, state_dtype) -> None:
        """Quantized state for an optimizer whose step it does not cover yet: refused."""
        if not _storage.is_quantized(state_dtype):
            return
        if self.spec.factored is not None:
            raise ValueError(f"state_dtype={state_dtype!r} does not apply to "
                             f"{self.spec.name}: its second moment is already factored (a "
                             "row and a column of floats per matrix, not one per element); "
                             "use state_dtype=None")
        why = None
        if self.spec.reductions is not None and any(s.float_state for s in
                                                    self.spec.slot_decls):
            why = "its per-tensor reductions read coded slots only, and it has a float_state one"
        elif any(s.from_param and not s.float_state for s in self.spec.slot_decls):
            why = "a slot of it starts as the param, and is not declared float_state"
        if why is not None:
            raise ValueError(f"state_dtype={state_dtype!r} is not supported for "
                             f"{self.spec.name} yet ({why}); use state_dtype='float32' or "
                             "'bfloat16'")

    def _with_storage(self, group: HyperGroup, state_dtype, master_weights,
                      where: str, mode: str | None = None, stochastic_rounding=False,
                      kahan_summation=False) -> HyperGroup:
        """``group`` with its storage policy: the engine's (or ``mode``, a group's own kept
        through a change), unless given (torch's param groups may each choose theirs:
        ``master_weights`` with ``stochastic_rounding`` and ``kahan_summation``)."""
        if state_dtype is _ENGINE:
            state_dtype = self.state_dtype
        try:
            _storage.check_state_dtype(state_dtype)
            self._check_quantizable(state_dtype)
            if master_weights is _ENGINE:
                group.mode = self.mode if mode is None else mode
            else:
                group.mode = _storage.mode_of(master_weights, stochastic_rounding,
                                              kahan_summation)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
        group.state_dtype = state_dtype
        return group

    def add_group(self, hyper: Mapping[str, Any], where: str | None = None, *,
                  state_dtype=_ENGINE, master_weights=_ENGINE, stochastic_rounding=False,
                  kahan_summation=False, names: Mapping[str, Any] | None = None) -> int:
        """A new hyperparameter group; returns its index. Its params are kept with
        ``state_dtype`` and ``master_weights`` (default: the engine's, its rounding mode
        included), or, where ``master_weights`` is given, that with ``stochastic_rounding``
        and ``kahan_summation``. Errors start with ``where`` (default "group N: ")."""
        where = f"group {len(self.hypers)}: " if where is None else where
        self.hypers.append(self._with_storage(self.validate_hyper(hyper, where, names),
                                              state_dtype,
                                              master_weights, where,
                                              stochastic_rounding=stochastic_rounding,
                                              kahan_summation=kahan_summation))
        return len(self.hypers) - 1

    def set_hyper(self, index: int, hyper: Mapping[str, Any], where: str | None = None, *,
                  state_dtype=_ENGINE, master_weights=_ENGINE, stochastic_rounding=False,
                  kahan_summation=False, names: Mapping[str, Any] | None = None) -> None:
        """Change group ``index``'s hyperparameters (a scheduler's new learning rate, say).

        The state slots and the storage policy must stay the ones its params hold
        (amsgrad, momentum on/off, state_dtype, master_weights). Errors start with
        ``where`` (default "group N: ")."""
        where = f"group {index}: " if where is None else where
        old = self.hypers[index]
        state_dtype = old.state_dtype if state_dtype is _ENGINE else state_dtype
        new = self._with_storage(self.validate_hyper(hyper, where, names), state_dtype,
                                 master_weights, where, mode=old.mode,
                                 stochastic_rounding=stochastic_rounding,
                                 kahan_summation=kahan_summation)
        if index in self.group_of:
            if new.slots != old.slots:
                raise ValueError(f"{where}the change would need state slots {new.slots}, "
                                 f"but its params hold {old.slots}; set amsgrad/momentum/"
                                 "centered before the first step, or make a new optimizer")
            if (new.state_dtype, new.mode) != (old.state_dtype, old.mode):
                raise ValueError(f"{where}its params already hold state kept with "
                                 f"state_dtype={old.state_dtype!r}, "
                                 f"{_storage.describe(old.mode)}; set those before the "
                                 "first step, or make a new optimizer")
        new.running = old.running  # a new learning rate continues the same averages
        self.hypers[index] = new
