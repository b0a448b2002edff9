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

from ._local import local
from ._names import FLAGS, RENAMES, Row, torch_name

_COMPLEX = (torch.complex32, torch.complex64, torch.complex128)


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


def params(index: int, group: dict, spec, device_type: str | None) -> None:
    """Every param of a new group: real floating point of a supported dtype, dense, on
    the CPU or a CUDA device, the group on one kind of device (and the optimizer's)."""
    devices = []
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
                            f"{', '.join(spec.dtypes)} params: keep a float32 master copy "
                            "and step that")
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
