"""What fusedopt.torch translates, one row per registered optimizer: torch's class name, its
arguments and defaults (torch 2.13's signatures), and its state-dict keys.

A row is made from the ``torch`` data of the optimizer's declaration
(fusedopt/algorithms/<family>.py); ``fusedopt/torch/optimizers.py`` makes one
``torch.optim.Optimizer`` subclass per row.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..algorithms.registry import REGISTRY
from ..memory import storage as _storage

#: torch argument -> registry hyperparameter, where the names differ. ``betas`` is
#: (beta_1, beta_2) unless a row's ``tuples`` says otherwise; RMSprop's ``alpha`` is the
#: registry's ``rho``, as Adadelta's ``rho``.
RENAMES = {"lr": "learning_rate", "eps": "epsilon", "alpha": "rho"}

#: torch arguments that are tuples of registry hyperparameters, unless a row names its own.
TUPLES = {"betas": ("beta_1", "beta_2")}

#: torch's flags, in every group; ``maximize`` is stepped, the others are checked
#: (fusedopt/torch/optimizer.py says which values are accepted).
FLAGS = ("maximize", "foreach", "fused", "capturable", "differentiable")


#: fusedopt's storage arguments, keyword-only after torch's on every class and keys of every
#: param group: ``state_dtype`` None (torch.optim's choice: the param's dtype; float32 for
#: float16 params, which fusedopt keeps no float16 state for, and beside a master),
#: "float32", "bfloat16" or "float64" (or the torch dtype); ``master_weights`` False, True
#: (an fp32 master) or "remainder" (bfloat16: an int16 remainder); for 16-bit params
#: without a master, ``stochastic_rounding`` or ``kahan_summation`` (a compensation in the
#: param's dtype); ``seed``, the key of stochastic rounding's random bits, one for the whole
#: optimizer (every group carries it, so that a checkpoint does). fusedopt/memory/storage.py.
POLICY = (("state_dtype", None), ("master_weights", False), ("stochastic_rounding", False),
          ("kahan_summation", False), ("seed", 0))

#: The slot after the optimizer's of each mode -> its key in a param's state.
MASTER_KEYS = {"master": "master", "remainder": "remainder", "compensation": "compensation"}


@dataclass(frozen=True)
class Row:
    """One torch class.

    - ``positional``/``keyword``: (argument, default) after ``params``, as torch's signature
      has them (positional-or-keyword, then keyword-only); every one becomes a key of each
      param group, in this order.
    - ``state``: (registry slot, torch state key) in the order torch's state dict lists them.
    - ``counts_steps``: the state holds torch's ``step`` (a float32 0-d tensor per param).
    - ``derived``: 0-d state entries torch carries from step to step and fusedopt derives
      from the step (:class:`fusedopt.algorithms.spec.StateScalar`: NAdam's
      ``mu_product``, ASGD's ``eta`` and ``mu``), in the order torch's state lists them
      after ``step``.
    - ``eager``: torch makes the state when the optimizer is made (Adagrad), not at a
      param's first step.
    - ``fixed``: group keys torch keeps that are no argument (AdamW's
      ``decoupled_weight_decay=True``), so that the groups match torch's.
    - ``renames``: torch argument -> registry hyperparameter, where this row's names differ
      from :data:`RENAMES` (ASGD's ``alpha`` is its own, not RMSprop's ``rho``).
    - ``tuples``: torch arguments that are tuples of registry hyperparameters (Rprop's
      ``etas`` and ``step_sizes``, AdEMAMix's three ``betas``), beside :data:`TUPLES`.
    - ``rule``: the update, in torch's names (the class docstring shows it).
    - ``peer``: where the real class lives, "module:Class" (the tests compare against it).
    """

    registry: str
    name: str
    positional: tuple
    keyword: tuple
    state: tuple
    counts_steps: bool = True
    derived: tuple = ()
    eager: bool = False
    fixed: tuple = ()
    renames: tuple = ()
    tuples: tuple = ()
    rule: str = ""
    peer: str = ""

    @property
    def arguments(self) -> dict:
        """Every argument with its default, in the order of torch's signature."""
        return dict(self.positional + self.keyword)

    @property
    def tuple_arguments(self) -> dict:
        """torch argument -> the registry hyperparameters it holds, for this row's tuples."""
        found = {k: v for k, v in TUPLES.items() if k in self.arguments}
        found.update(dict(self.tuples))
        return found

    def rename(self, key: str) -> str:
        """The registry hyperparameter behind torch argument ``key`` (not a tuple)."""
        return dict(self.renames).get(key, RENAMES.get(key, key))

    @property
    def hyper_names(self) -> dict:
        """torch argument -> the registry hyperparameter it is (a tuple of them for a tuple
        argument such as ``betas``), for every argument the engine takes (``maximize`` too;
        torch's other flags are checked here, not stepped): the engine translates a group
        with it, once, and names torch's argument in its errors."""
        tuples, names = self.tuple_arguments, {}
        for key in self.arguments:  # not self.fixed: those are the class's, not the registry's
            if key in FLAGS and key != "maximize":
                continue
            names[key] = tuples[key] if key in tuples else self.rename(key)
        return names

    @property
    def group_defaults(self) -> dict:
        """The keys and defaults of a param group (``params`` aside)."""
        return dict(self.positional + self.keyword + POLICY + self.fixed)


#: One row per registered optimizer that declares a torch door (its ``torch`` data).
ROWS = {spec.name: Row(spec.name, **spec.torch) for spec in REGISTRY.values()
        if spec.torch is not None}


def storage_policy(group: dict) -> dict:
    """The engine's storage arguments (``state_dtype``, ``master_weights``,
    ``stochastic_rounding``, ``kahan_summation``) of a checked param group, as the engine
    spells them: state_dtype None is "param" (the param's dtype, as torch.optim keeps
    state), a torch dtype its name."""
    state_dtype = group["state_dtype"]
    if state_dtype is None:
        state_dtype = "param"
    elif not isinstance(state_dtype, str):
        state_dtype = str(state_dtype).replace("torch.", "")
    return dict(state_dtype=state_dtype, master_weights=group["master_weights"],
                stochastic_rounding=group["stochastic_rounding"],
                kahan_summation=group["kahan_summation"])


def storage_mode(group: dict) -> str:
    """The engine's mode name (fusedopt/memory/storage.py) of a param group's ``master_weights``,
    ``stochastic_rounding`` and ``kahan_summation``; raises for values or combinations
    that mean nothing."""
    return _storage.mode_of(group["master_weights"], group["stochastic_rounding"],
                            group["kahan_summation"])
