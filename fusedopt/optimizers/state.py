"""An optimizer's state as a dict and as a checkpoint file (fusedopt/checkpoint.py): what
:class:`~fusedopt.Optimizer` saves and loads."""

from __future__ import annotations

import numpy as np

from .. import checkpoint
from ..engine import modes
from ..memory.arrays import kind_of


def _host(array) -> np.ndarray:
    return kind_of(array).to_host(array)


def _dtype_name(array) -> str:
    """The dtype of a saved array by NumPy's name ('bfloat16' for ml_dtypes' type)."""
    return kind_of(array).dtype(array) if kind_of(array).is_array(array) else \
        np.asarray(array).dtype.name


class Checkpoints:
    """``state_dict`` / ``load_state_dict`` and ``save`` / ``load`` of an optimizer."""

    def state_dict(self) -> dict:
        """Iterations, config and copies of every state array, keyed by param position:
        the optimizer's slots, and "master" (float32) or "remainder" (int16) with master
        weights, "compensation" (the param's dtype) with Kahan summation, each in its own
        dtype (bfloat16 as ``ml_dtypes.bfloat16``); with ``use_ema`` the moving averages;
        ``seed`` and ``iterations`` (the step count) are what a resumed run's stochastic
        rounding continues from."""
        engine = self._engine
        saved = {
            "iterations": self.iterations,
            "seed": engine.seed,
            "config": self.get_config(),
            "state": {i: {n: _host(s) for n, s in zip(engine.slot_names(i), slots)}
                      for i, slots in enumerate(engine.states)},
        }
        if self.use_ema:
            saved["averages"] = {i: _host(a) for i, a in enumerate(self._engine.averages)}
        saved.update(modes.saved_points(engine, _host))  # schedule-free: which point, sums
        return saved

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved; state is copied into the existing arrays.

        Before the optimizer is built the state is held and applied when it is.
        """
        if not self._params:
            self._pending_state = state
            self.iterations = int(state["iterations"])
            self._engine.seed = state.get("seed", self._engine.seed)
            return
        saved = state["state"]
        engine = self._engine
        states = engine.states
        if len(saved) != len(states):
            raise ValueError(f"the state holds {len(saved)} params, {self.name} has "
                             f"{len(states)}")
        for i, slots in enumerate(states):
            names = engine.slot_names(i)
            entry = saved.get(i, saved.get(str(i)))
            if entry is None or set(entry) != set(names):
                raise ValueError(f"param {i}: saved slots {sorted(entry or {})} differ from "
                                 f"{list(names)} (was amsgrad, master_weights or the "
                                 "optimizer changed?)")
            for name, s in zip(names, slots):
                if tuple(np.shape(entry[name])) != tuple(s.shape):
                    raise ValueError(f"param {i}: saved {name!r} has shape "
                                     f"{tuple(np.shape(entry[name]))}, the param has "
                                     f"{tuple(s.shape)}")
                have, want = _dtype_name(entry[name]), kind_of(s).dtype(s)
                if have != want:
                    raise ValueError(
                        f"param {i}: saved {name!r} is {have}, this optimizer keeps it in "
                        f"{want}; load it into an optimizer made with the state_dtype and "
                        "master_weights it was saved with (the saved config has them), or "
                        f"convert the checkpoint's arrays with .astype(...) first")
        averages = state.get("averages", {}) if self.use_ema else {}
        if self.use_ema and len(averages) != len(states):
            raise ValueError(f"{self.name} has use_ema=True: the state must hold the moving "
                             f"averages of its {len(states)} params, it holds "
                             f"{len(averages)} (saved without use_ema?)")
        for i, slots in enumerate(states):
            entry = saved.get(i, saved.get(str(i)))
            for name, s in zip(engine.slot_names(i), slots):
                kind_of(s).copy_from_host(s, np.asarray(_host(entry[name])))
        for i, a in enumerate(self._engine.averages):
            kind_of(a).copy_from_host(a, np.asarray(_host(averages.get(i, averages.get(str(i))))))
        self.iterations = int(state["iterations"])
        self._engine.seed = state.get("seed", self._engine.seed)
        modes.restore_points(engine, state, _host)

    def save(self, path) -> None:
        """Write a checkpoint of this optimizer to ``path``, atomically (fusedopt/checkpoint.py:
        safetensors with every state array, the class, config and counts)."""
        checkpoint.save(self, path)

    def load(self, path) -> None:
        """Restore the state and counts saved at ``path`` (:meth:`save`) into this optimizer,
        which keeps its own hyperparameters. A checkpoint of another class, convention,
        param count, shape, dtype or slot set raises, naming it, and changes nothing.
        ``fusedopt.load(path)`` makes the saved optimizer instead."""
        checkpoint.restore(self, path)

    # --- the step ---------------------------------------------------------------------------

