"""What a benchmark case times: the fused step and everything it is compared with.

Every contender is a no-argument callable doing one optimizer step (or one ceiling pass)
over the same ``n`` elements. The fused and unfused steps go through the public optimizer
classes, as a user would call them; PyTorch's optimizers update tensors of their own (or,
in one process, tensors sharing the param's memory); the ceiling reads and writes the same
number of arrays as the optimizer.

Two ways to build them:

- :func:`build` makes one contender with arrays of its own, for a worker process that
  runs nothing else (the isolated method, :mod:`.isolated`). A fused-step worker never
  imports torch.
- :func:`make_case` makes every contender of a case in this process, sharing the param and
  grad (the same-process method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .machine import first_line
from .traffic import Traffic, cpu_ceiling, cuda_ceiling, cuda_copy, itemsize, state_dtype, traffic

FUSED, UNFUSED = "fused", "unfused"
TORCH_FUSED, TORCH_FOREACH = "torch fused", "torch foreach"
CEILING, COPY = "ceiling", "copy"
#: Display order; a case holds the subset that could run.
ORDER = (FUSED, UNFUSED, TORCH_FUSED, TORCH_FOREACH, CEILING, COPY)
TORCH_MODES = {TORCH_FUSED: "fused", TORCH_FOREACH: "foreach"}

#: fusedopt registry name -> torch.optim class name (names missing from either are skipped).
TORCH_NAMES = {
    "adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop",
    "adagrad": "Adagrad", "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "NAdam",
    "radam": "RAdam", "rprop": "Rprop", "asgd": "ASGD",
}

#: Keras-named hyperparameters whose torch argument has the same name and meaning.
_SAME_NAMED = ("amsgrad", "momentum", "nesterov", "centered")


@dataclass
class Contender:
    name: str
    step: Callable[[], None]


@dataclass
class Built:
    """One contender built in a worker: its step (None if it cannot run here) and why not."""

    step: Callable[[], None] | None
    backend: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Case:
    """One (optimizer, size, dtype, backend) point of a sweep, ready to time in one process."""

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


def names_for(optimizer: str, backend: str, torch: bool = True) -> tuple[str, ...]:
    """The contenders a case of ``optimizer`` has on ``backend``, in display order."""
    out = [FUSED, UNFUSED]
    if torch and optimizer in TORCH_NAMES:
        out += [TORCH_FUSED, TORCH_FOREACH]
    out.append(CEILING)
    if backend == "cuda":
        out.append(COPY)
    return tuple(out)


def _flow(spec, dtype: str) -> Traffic:
    return traffic(spec, spec.flags(spec.defaults(), "keras"), dtype)


#: Host arrays repeat a random block of this many elements: as irregular as fresh random
#: values for the kernels (no branch or prefetch pattern shorter than the block), and
#: filled at copy speed (a 64M-element array of fresh normals takes over a second).
PATTERN = 1 << 16


def _numpy_dtype(dtype: str):
    try:
        return np.dtype(dtype)
    except TypeError:
        import ml_dtypes  # 16-bit floats NumPy lacks
        return np.dtype(getattr(ml_dtypes, dtype))


def _arrays(n: int, dtype: str, backend: str, seed: int):
    """A param and a grad of ``n`` elements, small normal values, on the backend's device
    (drawn in float32 and stored in ``dtype``, so 16-bit storage types work too)."""
    kind = _numpy_dtype(dtype)
    if backend == "cuda":
        import cupy
        rng = cupy.random.default_rng(seed)
        return ((rng.standard_normal(n, dtype=np.float32) * 0.1).astype(kind),
                (rng.standard_normal(n, dtype=np.float32) * 0.01).astype(kind))
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((2, min(n, PATTERN)), dtype=np.float32)
    return np.resize((block[0] * 0.1).astype(kind), n), np.resize((block[1] * 0.01).astype(kind), n)


def _fusedopt(name: str, backend: str, param):
    import fusedopt
    opt = fusedopt.get({"class_name": name, "config": {"backend": backend}})
    opt.build([param])
    return opt


def _optimizer_step(name: str, backend: str, param, grad):
    opt = _fusedopt(name, backend, param)
    return opt, (lambda: opt.apply_gradients([(grad, param)]))


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


def _torch_class(spec, backend: str, notes: list[str]):
    """(torch, the torch.optim class) for ``spec`` on ``backend``, or None with a note."""
    torch_name = TORCH_NAMES.get(spec.name)
    if torch_name is None:
        notes.append(f"torch: no torch.optim counterpart for {spec.name}")
        return None
    try:
        import torch
    except ImportError:
        notes.append("torch: not installed")
        return None
    cls = getattr(torch.optim, torch_name, None)
    if cls is None:
        notes.append(f"torch: torch.optim has no {torch_name}")
        return None
    if backend == "cuda" and not torch.cuda.is_available():
        notes.append("torch: this torch build sees no CUDA device")
        return None
    return torch, cls


def _torch_step(label: str, found, spec, param, grad, backend: str, notes: list[str]):
    """torch's ``fused=True`` or ``foreach=True`` step on tensors sharing param's memory,
    or None (with a note saying why)."""
    torch, cls = found
    as_tensor = torch.from_dlpack if backend == "cuda" else torch.from_numpy
    mode = TORCH_MODES[label]
    p = torch.nn.Parameter(as_tensor(param))
    p.grad = as_tensor(grad)
    try:
        opt = cls([p], **_torch_kwargs(cls.__name__, spec.defaults()), **{mode: True})
    except (TypeError, ValueError, RuntimeError) as error:
        notes.append(f"{label}: torch.optim.{cls.__name__}({mode}=True) unavailable "
                     f"({first_line(error)})")
        return None
    return opt.step


def _ceiling(param, grad, slots, backend: str):
    return (cuda_ceiling if backend == "cuda" else cpu_ceiling)(param, grad, slots)


def build(contender: str, optimizer: str, size: int, dtype: str, backend: str,
          seed: int = 0) -> Built:
    """One contender of a case with arrays of its own (run by a worker process)."""
    from ...algorithms.registry import lookup

    spec = lookup(optimizer)
    notes: list[str] = []
    if contender == COPY:
        return Built(cuda_copy(_flow(spec, dtype).total(size)), backend, notes)
    param, grad = _arrays(size, dtype, backend, seed)
    if contender in (FUSED, UNFUSED):
        _, step = _optimizer_step(spec.name, backend if contender == FUSED else "unfused",
                                  param, grad)
    elif contender in TORCH_MODES:
        found = _torch_class(spec, backend, notes)
        step = None if found is None else _torch_step(contender, found, spec, param, grad,
                                                      backend, notes)
    elif contender == CEILING:
        n_slots = len(spec.slots(spec.flags(spec.defaults(), "keras")))
        xp = np if isinstance(param, np.ndarray) else __import__("cupy")
        step = _ceiling(param, grad, [xp.zeros_like(param) for _ in range(n_slots)], backend)
    else:
        raise ValueError(f"unknown contender {contender!r}; known: {', '.join(ORDER)}")
    return Built(step, backend, notes)


def make_case(name: str, size: int, dtype: str, backend: str, seed: int = 0,
              torch: bool = True) -> Case:
    """Arrays, optimizers and ceilings for one point of the sweep, all in this process: the
    contenders share the param and grad, the ceiling the fused optimizer's state."""
    from ...algorithms.registry import lookup

    spec = lookup(name)
    param, grad = _arrays(size, dtype, backend, seed)
    fused, fused_step = _optimizer_step(spec.name, backend, param, grad)
    _, unfused_step = _optimizer_step(spec.name, "unfused", param, grad)
    notes: list[str] = []
    contenders = [Contender(FUSED, fused_step), Contender(UNFUSED, unfused_step)]
    found = _torch_class(spec, backend, notes) if torch else None
    for label in TORCH_MODES if found else ():
        step = _torch_step(label, found, spec, param, grad, backend, notes)
        if step is not None:
            contenders.append(Contender(label, step))
    slots = list(fused.state(param).values())
    contenders.append(Contender(CEILING, _ceiling(param, grad, slots, backend)))
    flow = _flow(spec, dtype)
    if backend == "cuda":
        contenders.append(Contender(COPY, cuda_copy(flow.total(size))))
    return Case(spec.name, size, dtype, backend, flow, contenders, notes)


def contender_bytes(contender: str, name: str, size: int, dtype: str) -> int:
    """Bytes of the arrays one contender touches in a step: param, grad and its own state
    slots (the copy: its source and destination). The unfused step's temporaries are extra."""
    from ...algorithms.registry import lookup

    spec = lookup(name)
    if contender == COPY:
        return _flow(spec, dtype).total(size)
    n_slots = len(spec.slots(spec.flags(spec.defaults(), "keras")))
    return size * (2 * itemsize(dtype) + n_slots * itemsize(state_dtype(dtype)))


def working_set(name: str, size: int, dtype: str, contenders, isolated: bool) -> int:
    """Bytes all ``contenders`` of a case allocate together. Isolated, each has arrays of
    its own; in one process they share the param and grad, and the ceiling the fused
    step's state."""
    if isolated:
        return sum(contender_bytes(c, name, size, dtype) for c in contenders)
    item = itemsize(dtype)
    per_slot_set = contender_bytes(FUSED, name, size, dtype) - 2 * size * item
    owners = sum(c in (FUSED, UNFUSED, *TORCH_MODES) for c in contenders) or 1
    copy = contender_bytes(COPY, name, size, dtype) if COPY in contenders else 0
    return 2 * size * item + owners * per_slot_set + copy
