"""The schedule-free torch classes' part of the door: the schedulefree package's ``train()``
/ ``eval()`` and its param-group keys (``k``, ``train_mode``, ``lr_max``, ``weight_sum``,
``scheduled_lr``), translated to and from the engine (fusedopt/engine/modes.py moves the
params; the engine keeps the running scalars).

As the package: a new optimizer is in eval mode, ``step()`` before ``train()`` raises, and
a checkpoint carries the group keys, so that one of ``schedulefree.AdamWScheduleFree``
loads here and the reverse. In eval mode the kept training point of each param is its
state's ``"y"``: a checkpoint taken there resumes bit for bit; one of the package (no
``"y"``) lerps back to y as the package does.
"""

from __future__ import annotations

import torch

from ..engine import modes
from ._checkpoint import _beside
from ._local import like_param
from .optimizer import Optimizer

#: The package's group keys that are no argument, with their values before any step.
GROUP_KEYS = (("k", 0), ("train_mode", False), ("weight_sum", 0.0), ("lr_max", -1.0),
              ("scheduled_lr", 0.0))


class ScheduleFree(Optimizer):
    """Base of ``AdamWScheduleFree`` and ``SGDScheduleFree``."""

    def __init__(self, params, defaults: dict):
        super().__init__(params, {**defaults, **dict(GROUP_KEYS)})
        self._engine.evaluating = True

    # --- the two points ---------------------------------------------------------------------
    @torch.no_grad()
    def eval(self) -> None:
        """Params to x, the point to evaluate (one fused pass per dtype); y is kept."""
        self._switch(True)

    @torch.no_grad()
    def train(self) -> None:
        """Params back to y, the point the step needs, bit for bit as before eval()."""
        self._switch(False)

    def _switch(self, to_eval: bool) -> None:
        if self._engine is None:
            self._rebuild()
        self._engine.evaluating = not self.param_groups[0]["train_mode"]
        modes.switch(self._engine, to_eval)
        for group in self.param_groups:
            group["train_mode"] = not to_eval
            for p in group["params"]:  # the package's train()/eval() make an entry each
                _ = self.state[p]
        self._expose_kept()

    def _expose_kept(self) -> None:
        kept = self._engine.kept
        for p, held in self._params_held():
            state = self.state[p]
            y = None if kept is None else kept[held.position]
            if y is None:
                state.pop("y", None)
            else:
                state["y"] = like_param(p, y if held.layout is None else held.layout.outward(y))

    def _params_held(self):
        for group in self.param_groups:
            for p in group["params"]:
                held = self._held.get(id(p))
                if held is not None:
                    yield p, held

    # --- the step and the group keys --------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        """One fused step; refused in eval mode, as the package refuses it."""
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(f"{type(self).__name__} is in eval mode (as it starts): call "
                               "optimizer.train() before step(), and optimizer.eval() "
                               "before evaluating or saving")
        loss = super().step(closure)
        self._publish()
        return loss

    def _publish(self) -> None:
        """The engine's step counts and running scalars into the package's group keys."""
        engine = self._engine
        steps = engine.steps
        for index, group in enumerate(self.param_groups):
            held = [self._held[id(p)].position for p in group["params"] if id(p) in self._held]
            if not held:
                continue
            k = max(steps[pos] for pos in held)
            running = engine.hypers[index].running
            if running is not None:
                group["lr_max"], group["weight_sum"] = running["lr_max"], running["weight_sum"]
            lr, warm = engine.hypers[index].hyper["learning_rate"], int(group["warmup_steps"])
            group["k"] = k
            group["scheduled_lr"] = lr * k / warm if 0 < k <= warm else lr

    def _rebuild(self) -> None:
        """The base's rebuild, with the kept y's and the group keys taken back."""
        kept = {}
        for p, entry in list(self.state.items()):
            if isinstance(entry, dict) and "y" in entry:
                kept[id(p)] = entry.pop("y")
        try:
            super()._rebuild()
        except BaseException:
            for p in self.state:
                if id(p) in kept:
                    self.state[p]["y"] = kept[id(p)]
            raise
        engine = self._engine
        engine.evaluating = not self.param_groups[0]["train_mode"]
        for index, group in enumerate(self.param_groups):
            k = int(group["k"])
            engine.hypers[index].running = None if k == 0 else {
                "lr_max": float(group["lr_max"]), "weight_sum": float(group["weight_sum"])}
            for p in group["params"]:
                held = self._held.get(id(p))
                if held is not None:
                    engine.steps[held.position] = k
        engine.kept = None
        if engine.evaluating and kept:
            engine.kept = [None] * len(engine.params)
            for p, held in self._params_held():
                if id(p) in kept:
                    value = kept[id(p)].detach()
                    if held.layout is not None:
                        value = held.layout.like(value, "the kept training point 'y'")
                    dtype = modes.kept_dtype(engine, held.position)
                    engine.kept[held.position] = _beside(held.memory, dtype).copy_(value)
        self._expose_kept()
