"""What fusedopt.torch refuses, checked before anything changes, with errors that name the
param group, the param and the fix.

Flags (torch's, in every group):

- ``maximize``: supported (the engine negates the grads inside the pass);
- ``foreach``, ``fused``: accepted at any value; they choose between torch's own loops and
  mean nothing here, where a step is always one fused pass;
- ``capturable=True``: refused. fusedopt computes each step's scalars (bias corrections,
  learning rate) on the host and passes them to the kernel, so a step captured in a CUDA
  graph would replay the first step's values. (fusedopt does not wait for the device in a
  step anyway; that is what capturable is usually after.)
- ``differentiable=True``: refused. The step is a kernel outside autograd; differentiate
  through torch.optim's own step.
"""

from __future__ import annotations

import torch

from ..engine.engine import check_seed
from ..memory import storage as _storage
from ._local import local
from ._names import FLAGS, RENAMES, Row, storage_mode, storage_policy, torch_name

_COMPLEX = (torch.complex32, torch.complex64, torch.complex128)
#: The state dtypes a param group may name (None stands for "param": fusedopt/memory/storage.py).
_STATE_DTYPES = tuple(d for d in _storage.STATE_DTYPES if d != "param")


def flags(index: int, group: dict, row: Row) -> None:
    where = f"param group {index}"
    for key in FLAGS:
        if key not in row.arguments:
            continue
        value = group.get(key, row.arguments[key])
        if key in ("maximize", "capturable", "differentiable") and not isinstance(value, bool):
            raise ValueError(f"{where}: {key} must be True or False, got {value!r}")
        if key in ("foreach", "fused") and value not in (None, True, False):
            raise ValueError(f"{where}: {key} must be None, True or False, got {value!r}")
    if group.get("capturable"):
        raise ValueError(f"{where}: capturable=True is not supported: fusedopt computes each "
                         "step's scalars on the host and passes them to the kernel, so a "
                         "captured step would replay stale values. Leave capturable=False "
                         "(fusedopt's step does not wait for the device anyway)")
    if group.get("differentiable"):
        raise ValueError(f"{where}: differentiable=True is not supported: fusedopt's step is a "
                         f"fused kernel outside autograd; use torch.optim.{row.name}"
                         "(differentiable=True) to differentiate through the update")


def hyper(index: int, group: dict, row: Row, spec) -> None:
    """Each of the group's values against the registry's check, named as torch names it."""
    checks = {h.name: h for h in spec.hypers}
    for key in row.arguments:
        if key in FLAGS:
            continue
        value = group[key]
        if key == "betas":
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise ValueError(f"param group {index}: betas must be a pair (beta1, beta2), "
                                 f"got {value!r}")
            named = {"beta_1": value[0], "beta_2": value[1]}
        else:
            named = {RENAMES.get(key, key): value}
        for name, v in named.items():
            v = v.item() if isinstance(v, torch.Tensor) and v.dim() == 0 else v
            problem = checks[name].check(v) if name in checks else None
            if problem:
                raise ValueError(f"param group {index}: {torch_name(name, row)} {problem}, "
                                 f"got {v!r}")


def storage(index: int, group: dict) -> None:
    """The group's ``state_dtype``, ``master_weights``, ``stochastic_rounding``,
    ``kahan_summation`` and ``seed`` values (their fit with each param's dtype is checked
    by :func:`params`)."""
    where = f"param group {index}"
    state_dtype, master = group["state_dtype"], group["master_weights"]
    if isinstance(state_dtype, torch.dtype):
        state_dtype = str(state_dtype).replace("torch.", "")
    if state_dtype is not None and (not isinstance(state_dtype, str)
                                    or state_dtype not in _STATE_DTYPES):
        raise ValueError(f"{where}: state_dtype must be None (the param's dtype, as "
                         "torch.optim keeps state; float32 for float16 params), 'float32', "
                         f"'bfloat16' or 'float64' (or the torch dtype), got {state_dtype!r}")
    if not (master is False or master is True or master == "remainder"):
        raise ValueError(f"{where}: master_weights must be False, True (an fp32 master of "
                         "each 16-bit param) or 'remainder' (bfloat16 params: an int16 "
                         f"remainder), got {master!r}")
    try:
        storage_mode(group)
        check_seed(group["seed"])
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}: {error}") from None


def params(index: int, group: dict, spec, device_type: str | None) -> None:
    """Every param of a new group: real floating point of a supported dtype, dense, on
    the CPU or a CUDA device, the group on one kind of device (and the optimizer's), each
    able to take the group's ``state_dtype`` and ``master_weights``."""
    devices = []
    state_dtype, mode = storage_policy(group)["state_dtype"], storage_mode(group)
    for j, p in enumerate(group["params"]):
        where = f"param group {index}, param {j} (shape {tuple(p.shape)})"
        memory = local(p)
        if p.dtype in _COMPLEX:
            raise TypeError(f"{where} is {p.dtype}: fusedopt steps real params only; keep the "
                            "real and imaginary parts as a real tensor (torch.view_as_real) "
                            "or use torch.optim for complex params")
        name = str(p.dtype).replace("torch.", "")
        if name not in spec.dtypes:
            raise TypeError(f"{where} has dtype {p.dtype}; fusedopt.torch steps "
                            f"{', '.join(spec.dtypes)} params: convert it (.float())")
        try:
            _storage.resolve(where, name, state_dtype, mode)
        except ValueError as error:
            if mode == "plain" or name in _storage.SIXTEEN_BIT:
                raise
            chosen = next(k for k, v in _storage.mode_options(mode).items() if v is not False)
            raise ValueError(f"{error}; in a model of several dtypes, give the {name} params "
                             f"a param group of their own with {chosen}=False") from None
        if memory.layout != torch.strided:
            raise TypeError(f"{where} is a {memory.layout} tensor; fusedopt steps dense params")
        if memory.device.type not in ("cpu", "cuda"):
            raise TypeError(f"{where} is on {memory.device}; fusedopt steps CPU and CUDA "
                            "tensors")
        if not memory.is_contiguous():
            raise ValueError(f"{where} is not contiguous (strides {tuple(memory.stride())}): "
                             "fusedopt updates params through their memory; make it "
                             "contiguous (.contiguous(), not channels_last) before building "
                             "the optimizer")
        devices.append(memory.device)
    kinds = sorted({d.type for d in devices})
    if len(kinds) > 1:
        first = {t: next(j for j, d in enumerate(devices) if d.type == t) for t in kinds}
        raise ValueError(f"param group {index} mixes CPU and CUDA tensors (param "
                         f"{first['cpu']} is on cpu, param {first['cuda']} on "
                         f"{devices[first['cuda']]}); give each device its own optimizer")
    if kinds and device_type is not None and kinds[0] != device_type:
        raise ValueError(f"param group {index} is on {kinds[0]} but the optimizer's other "
                         f"groups are on {device_type}; give each device its own optimizer")


def grad(index: int, j: int, p, g) -> None:
    """A grad that the engine's own checks would not name in torch's terms."""
    where = f"param group {index}, param {j} (shape {tuple(p.shape)})"
    if g.layout != torch.strided:
        raise TypeError(f"{where} has a sparse grad ({g.layout}); fusedopt steps dense grads: "
                        "use torch.optim.SparseAdam or a dense embedding (sparse=False)")
