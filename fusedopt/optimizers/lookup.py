"""Optimizers by name: ``fusedopt.get`` (a name, a config or an optimizer) and
``fusedopt.load`` (the optimizer a checkpoint holds: its class, config and state)."""

from __future__ import annotations

from .. import checkpoint
from .base import Optimizer


def classes() -> dict[str, type]:
    """Registry name -> class, every optimizer class fusedopt has."""
    return {cls.spec_name: cls for cls in Optimizer.__subclasses__()}


def get(identifier):
    """An optimizer from a name (``"adam"``), a config dict, or an optimizer (returned as is).

    A config dict is either ``get_config()``'s output plus a ``"class_name"`` key, or
    Keras' serialized form ``{"class_name": "Adam", "config": {...}}``.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    known = classes()
    if isinstance(identifier, str):
        key = identifier.lower().replace("_", "")
        if key not in known:
            raise ValueError(f"unknown optimizer {identifier!r}; known: {', '.join(sorted(known))}")
        return known[key]()
    if isinstance(identifier, dict):
        if "class_name" not in identifier:
            raise ValueError("an optimizer config dict needs a 'class_name' key (e.g. 'Adam')")
        config = dict(identifier.get("config", {k: v for k, v in identifier.items()
                                                if k != "class_name"}))
        key = str(identifier["class_name"]).lower().replace("_", "")
        if key not in known:
            raise ValueError(f"unknown optimizer class {identifier['class_name']!r}")
        return known[key].from_config(config)
    raise TypeError(f"cannot make an optimizer from a {type(identifier).__name__}")


def load(path, params=None, **overrides):
    """The optimizer saved at ``path``: its class and config, with its state and counts.

    ``params``: the arrays it updates (in the order it was built with), or None to leave it
    pending until its first step, whose params are then checked against the checkpoint.
    ``overrides``: config entries to replace, e.g. ``learning_rate=schedule`` for a schedule
    (a checkpoint holds no code) or ``backend="cuda"`` to resume on another backend.
    """
    pending = checkpoint.read_pending(path)
    meta = pending.meta
    cls = classes().get(meta["optimizer"])
    if cls is None:
        raise checkpoint.CheckpointMismatch(f"{path} is a checkpoint of {meta['class']!r} "
                                 f"({meta['optimizer']!r}), which this fusedopt does not have")
    config = dict(meta["config"], **overrides)
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"schedule"}:
            raise checkpoint.CheckpointMismatch(f"{key} was a schedule when saved ({value['schedule']}); "
                                     f"a checkpoint holds no code: pass it again, "
                                     f"fusedopt.load(path, {key}=schedule)")
    opt = cls.from_config(config)
    pending.adopt_decays = True
    opt._pending_state = pending
    opt._engine.iterations = int(meta["iterations"])
    if params is not None:
        opt.bind(params)
    return opt
