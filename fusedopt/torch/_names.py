"""What fusedopt.torch translates, one row per registered optimizer: torch's class name, its
arguments and defaults (torch 2.13's signatures), and its state-dict keys.

A row names the registry entry it fronts; ``fusedopt/torch/optimizers.py`` makes one
``torch.optim.Optimizer`` subclass per row. To give a registered optimizer a torch class:
add a row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..memory import storage as _storage

#: torch argument -> registry hyperparameter, where the names differ. ``betas`` is
#: (beta_1, beta_2); RMSprop's ``alpha`` is the registry's ``rho``, as Adadelta's ``rho``.
RENAMES = {"lr": "learning_rate", "eps": "epsilon", "alpha": "rho"}

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
    - ``mu_product``: the state holds NAdam's running momentum product.
    - ``eager``: torch makes the state when the optimizer is made (Adagrad), not at a
      param's first step.
    - ``fixed``: group keys torch keeps that are no argument (AdamW's
      ``decoupled_weight_decay=True``), so that the groups match torch's.
    - ``rule``: the update, in torch's names (the class docstring shows it).
    - ``peer``: where the real class lives, "module:Class" (the tests compare against it).
    """

    registry: str
    name: str
    positional: tuple
    keyword: tuple
    state: tuple
    counts_steps: bool = True
    mu_product: bool = False
    eager: bool = False
    fixed: tuple = ()
    rule: str = ""
    peer: str = ""

    @property
    def arguments(self) -> dict:
        """Every argument with its default, in the order of torch's signature."""
        return dict(self.positional + self.keyword)

    @property
    def group_defaults(self) -> dict:
        """The keys and defaults of a param group (``params`` aside)."""
        return dict(self.positional + self.keyword + POLICY + self.fixed)


_ADAM_STATE = (("m", "exp_avg"), ("v", "exp_avg_sq"), ("vhat", "max_exp_avg_sq"))
_ADAM_RULE = """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  amsgrad: v_max = max(v_max, v)
p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)"""
_L2 = "weight_decay: g += weight_decay * p first (L2)."

ROWS = {row.registry: row for row in (
    Row("adam", "Adam",
        (("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0),
         ("amsgrad", False)),
        (("foreach", None), ("maximize", False), ("capturable", False),
         ("differentiable", False), ("fused", None), ("decoupled_weight_decay", False)),
        _ADAM_STATE, peer="torch.optim:Adam",
        rule=_ADAM_RULE + "\n" + _L2 + " decoupled_weight_decay=True: p *= 1 - lr * "
        "weight_decay instead (AdamW)."),
    Row("adamw", "AdamW",
        (("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 1e-2),
         ("amsgrad", False)),
        (("maximize", False), ("foreach", None), ("capturable", False),
         ("differentiable", False), ("fused", None)),
        _ADAM_STATE, fixed=(("decoupled_weight_decay", True),), peer="torch.optim:AdamW",
        rule="p *= 1 - lr * weight_decay, then Adam:\n" + _ADAM_RULE),
    Row("sgd", "SGD",
        (("lr", 1e-3), ("momentum", 0), ("dampening", 0), ("weight_decay", 0),
         ("nesterov", False)),
        (("maximize", False), ("foreach", None), ("differentiable", False), ("fused", None)),
        (("momentum", "momentum_buffer"),), counts_steps=False, peer="torch.optim:SGD",
        rule="b = g at a param's first step, then b = momentum b + (1 - dampening) g\n"
        "p -= lr * (g + momentum b if nesterov else b)   (momentum 0: p -= lr g)\n" + _L2),
    Row("rmsprop", "RMSprop",
        (("lr", 1e-2), ("alpha", 0.99), ("eps", 1e-8), ("weight_decay", 0), ("momentum", 0),
         ("centered", False), ("capturable", False), ("foreach", None), ("maximize", False),
         ("differentiable", False)),
        (),
        (("velocity", "square_avg"), ("momentum", "momentum_buffer"),
         ("average_gradient", "grad_avg")), peer="torch.optim:RMSprop",
        rule="v = alpha v + (1 - alpha) g^2;  centered: a = alpha a + (1 - alpha) g,\n"
        "d = sqrt(v - a^2) + eps, else d = sqrt(v) + eps\n"
        "momentum: b = momentum b + g / d, p -= lr b;  else p -= lr g / d\n" + _L2),
    Row("adagrad", "Adagrad",
        (("lr", 1e-2), ("lr_decay", 0), ("weight_decay", 0), ("initial_accumulator_value", 0),
         ("eps", 1e-10), ("foreach", None)),
        (("maximize", False), ("differentiable", False), ("fused", None)),
        (("accumulator", "sum"),), eager=True, peer="torch.optim:Adagrad",
        rule="s starts at initial_accumulator_value;  s += g^2\n"
        "p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)\n" + _L2),
    Row("adadelta", "Adadelta",
        (("lr", 1.0), ("rho", 0.9), ("eps", 1e-6), ("weight_decay", 0), ("foreach", None)),
        (("capturable", False), ("maximize", False), ("differentiable", False)),
        (("accumulated_grad", "square_avg"), ("accumulated_delta_var", "acc_delta")),
        peer="torch.optim:Adadelta",
        rule="E_g = rho E_g + (1 - rho) g^2;  d = sqrt(E_d + eps) / sqrt(E_g + eps) * g\n"
        "E_d = rho E_d + (1 - rho) d^2;  p -= lr d\n" + _L2),
    Row("adamax", "Adamax",
        (("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0),
         ("foreach", None)),
        (("maximize", False), ("differentiable", False), ("capturable", False)),
        (("m", "exp_avg"), ("u", "exp_inf")), peer="torch.optim:Adamax",
        rule="m = b1 m + (1 - b1) g;  u = max(b2 u, |g| + eps)\n"
        "p -= lr / (1 - b1^t) * m / u\n" + _L2),
    Row("nadam", "NAdam",
        (("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0),
         ("momentum_decay", 4e-3), ("decoupled_weight_decay", False)),
        (("foreach", None), ("maximize", False), ("capturable", False),
         ("differentiable", False)),
        (("m", "exp_avg"), ("v", "exp_avg_sq")), mu_product=True, peer="torch.optim:NAdam",
        rule="mu_t = b1 (1 - 0.5 * 0.96^(t momentum_decay));  P_t = mu_1 ... mu_t "
        "(mu_product)\nm, v as Adam;  d = sqrt(v / (1 - b2^t)) + eps\n"
        "p -= lr (1 - mu_t) / (1 - P_t) * g / d + lr mu_(t+1) / (1 - P_t mu_(t+1)) * m / d\n"
        + _L2 + " decoupled_weight_decay=True: p *= 1 - lr * weight_decay instead."),
    # No torch.optim.Lion: the arguments of the common torch Lion (lion-pytorch), whose
    # decay is decoupled, theta *= 1 - lr * wd, as the registry's torch convention does.
    Row("lion", "Lion",
        (("lr", 1e-4), ("betas", (0.9, 0.99)), ("weight_decay", 0.0)),
        (("maximize", False),),
        (("m", "exp_avg"),), counts_steps=False, peer="lion_pytorch:Lion",
        rule="p *= 1 - lr * weight_decay;  p -= lr * sign(b1 m + (1 - b1) g)\n"
        "m = b2 m + (1 - b2) g   (Chen et al., 2023)"),
)}


def registry_hyper(group: dict, row: Row) -> dict:
    """The registry's hyperparameters (and ``maximize``) for torch param group ``group``."""
    hyper = {}
    for key in row.arguments:  # not row.fixed: those are the class's, not the registry's
        if key in FLAGS and key != "maximize":
            continue
        value = group[key]
        if key == "betas":
            hyper["beta_1"], hyper["beta_2"] = (_number(b) for b in value)
        else:
            hyper[RENAMES.get(key, key)] = _number(value)
    return hyper


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


def torch_name(registry_name: str, row: Row) -> str:
    """The torch argument of ``row`` behind a registry hyperparameter, for error messages."""
    if registry_name in ("beta_1", "beta_2"):
        return "betas[0]" if registry_name == "beta_1" else "betas[1]"
    for key in row.arguments:
        if RENAMES.get(key, key) == registry_name:
            return key
    return registry_name


def _number(value):
    """A 0-d tensor (torch allows a tensor lr) as a Python number; anything else as is."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value
