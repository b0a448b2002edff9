"""What a benchmark case times: the fused step and everything it is compared with.

Every contender is a no-argument callable doing one optimizer step (or one ceiling pass)
over the same ``n`` elements. The fused and unfused steps go through the public optimizer
classes, as a user would call them; PyTorch's optimizers update a tensor sharing the
param's memory; the ceilings reuse the fused optimizer's state arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .timing import first_line
from .traffic import Traffic, cpu_ceiling, cuda_ceiling, cuda_copy, traffic

FUSED, UNFUSED = "fused", "unfused"
TORCH_FUSED, TORCH_FOREACH = "torch fused", "torch foreach"
CEILING, COPY = "ceiling", "copy"
#: Display order; a case holds the subset that could run.
ORDER = (FUSED, UNFUSED, TORCH_FUSED, TORCH_FOREACH, CEILING, COPY)

#: fusedopt registry name -> torch.optim class name (names missing from either are skipped).
TORCH_NAMES = {
    "adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop",
    "adagrad": "Adagrad", "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "NAdam",
}

#: Keras-named hyperparameters whose torch argument has the same name and meaning.
_SAME_NAMED = ("amsgrad", "momentum", "nesterov", "centered")


@dataclass
class Contender:
    name: str
    step: Callable[[], None]


@dataclass
class Case:
    """One (optimizer, size, dtype, backend) point of a sweep, ready to time."""

    optimizer: str
    size: int
    dtype: str
    backend: str
    traffic: Traffic
    contenders: list[Contender]
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.traffic.total(self.size)


def _arrays(n: int, dtype: str, backend: str, seed: int):
    """A param and a grad of ``n`` elements, small normal values, on the backend's device."""
    if backend == "cuda":
        import cupy
        rng = cupy.random.default_rng(seed)
    else:
        rng = np.random.default_rng(seed)
    param = rng.standard_normal(n, dtype=np.dtype(dtype)) * 0.1
    grad = rng.standard_normal(n, dtype=np.dtype(dtype)) * 0.01
    return param, grad


def _fusedopt(name: str, backend: str, param):
    import fusedopt
    opt = fusedopt.get({"class_name": name, "config": {"backend": backend}})
    opt.build([param])
    return opt


def _torch_kwargs(torch_name: str, hp: dict) -> dict:
    """torch arguments matching the Keras-named defaults, where they control the work done."""
    kw = {"lr": float(hp["learning_rate"])}
    if "beta_1" in hp and "beta_2" in hp:
        kw["betas"] = (float(hp["beta_1"]), float(hp["beta_2"]))
    if "epsilon" in hp:
        kw["eps"] = float(hp["epsilon"])
    if "rho" in hp:
        kw["alpha" if torch_name == "RMSprop" else "rho"] = float(hp["rho"])
    if hp.get("weight_decay"):
        kw["weight_decay"] = float(hp["weight_decay"])
    kw.update({k: hp[k] for k in _SAME_NAMED if k in hp})
    return kw


def _torch_contenders(name: str, hp: dict, param, grad, backend: str, notes: list[str]):
    """torch ``fused=True`` and ``foreach=True`` steps on tensors sharing param's memory."""
    torch_name = TORCH_NAMES.get(name)
    if torch_name is None:
        notes.append(f"torch: no torch.optim counterpart for {name}")
        return []
    try:
        import torch
    except ImportError:
        notes.append("torch: not installed")
        return []
    cls = getattr(torch.optim, torch_name, None)
    if cls is None:
        notes.append(f"torch: torch.optim has no {torch_name}")
        return []
    if backend == "cuda":
        if not torch.cuda.is_available():
            notes.append("torch: this torch build sees no CUDA device")
            return []
        as_tensor = torch.from_dlpack
    else:
        as_tensor = torch.from_numpy
    out = []
    for label, mode in ((TORCH_FUSED, "fused"), (TORCH_FOREACH, "foreach")):
        p = torch.nn.Parameter(as_tensor(param))
        p.grad = as_tensor(grad)
        try:
            opt = cls([p], **_torch_kwargs(torch_name, hp), **{mode: True})
        except (TypeError, ValueError, RuntimeError) as error:
            notes.append(f"{label}: torch.optim.{torch_name}({mode}=True) unavailable "
                         f"({first_line(error)})")
            continue
        out.append(Contender(label, opt.step))
    return out


def make_case(name: str, size: int, dtype: str, backend: str, seed: int = 0,
              torch: bool = True) -> Case:
    """Arrays, optimizers and ceilings for one point of the sweep."""
    from .._registry import lookup

    spec = lookup(name)
    param, grad = _arrays(size, dtype, backend, seed)
    fused = _fusedopt(spec.name, backend, param)
    unfused = _fusedopt(spec.name, "unfused", param)
    notes: list[str] = []
    contenders = [
        Contender(FUSED, lambda: fused.apply_gradients([(grad, param)])),
        Contender(UNFUSED, lambda: unfused.apply_gradients([(grad, param)])),
    ]
    if torch:
        contenders += _torch_contenders(spec.name, fused.hyper, param, grad, backend, notes)
    slots = list(fused.state(param).values())
    flow = traffic(spec, fused.flags, dtype)
    if backend == "cuda":
        contenders.append(Contender(CEILING, cuda_ceiling(param, grad, slots)))
        contenders.append(Contender(COPY, cuda_copy(flow.total(size))))
    else:
        contenders.append(Contender(CEILING, cpu_ceiling(param, grad, slots)))
    return Case(spec.name, size, dtype, backend, flow, contenders, notes)


def working_set(name: str, size: int, dtype: str, torch: bool = True) -> int:
    """Bytes a case allocates: param, grad, and a set of slots per state-owning contender."""
    from .._registry import lookup

    spec = lookup(name)
    item = np.dtype(dtype).itemsize
    n_slots = len(spec.slots(spec.flags(spec.defaults(), "keras")))
    owners = 2 + (2 if torch and name in TORCH_NAMES else 0)  # fused, unfused, torch x2
    return size * item * (2 + owners * n_slots)
