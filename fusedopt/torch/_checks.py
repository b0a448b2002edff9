"""What fusedopt.torch refuses, checked before anything changes, with errors that name the
param group, the param and the fix.

Flags (torch's, in every group):

- ``maximize``: supported (the engine negates the grads inside the pass);
- ``foreach``, ``fused``: accepted at any value; they choose between torch's own loops and
  mean nothing here, where a step is always one fused pass;
- ``capturable=True``: refused. fusedopt computes each step's scalars (bias corrections,
  learning rate) on the host and passes them to the kernel, so a step captured in a CUDA
  graph would replay the first step's values. (fusedopt does not wait for the device in a
  step anyway: the step counts are the host's, read back from nowhere.) Keeping the count
  and lr on the device would take the scalars' computation into the kernels. torch.compile
  sets the flag itself on an optimizer of CUDA params without state when traced code reads
  ``opt.param_groups`` (code that sets lr by hand inside the compiled function, say; torch
  does not trace ``zero_grad``, and fusedopt's step reads the groups without setting it):
  the error says so.
- ``differentiable=True``: refused. The step is a kernel outside autograd; differentiate
  through torch.optim's own step.

Params: a dtype the optimizer steps (complex64 and complex128 as real pairs), dense in any
order of their dimensions (fusedopt/torch/_layout.py), strided layout, CPU or CUDA; a param
with gaps or overlaps in its memory (a slice, an expanded tensor) is refused, as the step
updates a param as one block of memory. Meta-device params pass at construction and are
checked when first stepped. Sparse grads are refused. Hyperparameters: the registry's
checks, in torch's names; tensors of one element, as torch takes them (and refused where
torch's Adam and AdamW constructors refuse them).
"""

from __future__ import annotations

import torch

from ..engine.engine import check_seed
from ..memory import storage as _storage
from . import _layout
from ._local import local
from ._names import FLAGS, Row, storage_mode, storage_policy

#: Complex dtypes stepped as real pairs (fusedopt/torch/_layout.py) -> their real dtype.
_COMPLEX = {torch.complex64: torch.float32, torch.complex128: torch.float64}
#: torch classes whose constructor refuses a tensor lr or betas with foreach=True (their
#: foreach loop cannot take one), and betas mixing a tensor and a float.
_TENSOR_BETAS = ("Adam", "AdamW")
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
                         "(fusedopt's step does not wait for the device anyway). If you did "
                         "not set it: torch.compile sets it on CUDA optimizers without state "
                         "when compiled code reads opt.param_groups; take one step before "
                         "compiling, or read the groups outside the compiled function")
    if group.get("differentiable"):
        raise ValueError(f"{where}: differentiable=True is not supported: fusedopt's step is a "
                         f"fused kernel outside autograd; use torch.optim.{row.name}"
                         "(differentiable=True) to differentiate through the update")


def hyper(index: int, group: dict, row: Row) -> None:
    """The group's values in the forms torch takes: ``betas`` a pair, a tensor value of one
    element (of any shape, as torch takes a tensor lr, and Adam's and AdamW's tensor
    betas: the step reads its number). Their values are checked once, by the engine
    (fusedopt/engine/hypers.py), in torch's names (``Row.hyper_names``)."""
    _tensor_rules(index, group, row)
    tuples = row.tuple_arguments
    for key in row.hyper_names:
        value = group[key]
        members = tuples.get(key)
        if members:
            if not isinstance(value, (tuple, list)) or len(value) != len(members):
                what = "a pair" if len(members) == 2 else f"a tuple of {len(members)}"
                raise ValueError(f"param group {index}: {key} must be {what} "
                                 f"({', '.join(members)}), got {value!r}")
            named = {f"{key}[{i}]": v for i, v in enumerate(value)}
        else:
            named = {key: value}
        for name, v in named.items():
            if isinstance(v, torch.Tensor) and v.numel() != 1:
                raise ValueError(f"param group {index}: Tensor {name} must be 1-element, "
                                 f"got shape {tuple(v.shape)}")


def _tensor_rules(index: int, group: dict, row: Row) -> None:
    """What torch's Adam and AdamW constructors refuse of tensor hyperparameters (their
    foreach loop takes no tensor lr or betas), refused alike so that code moves both ways."""
    if row.name not in _TENSOR_BETAS:
        return
    where, betas = f"param group {index}", group["betas"]
    foreach = group.get("foreach") and not group.get("capturable")
    if foreach and isinstance(group["lr"], torch.Tensor):
        raise ValueError(f"{where}: lr as a Tensor is not supported for capturable=False and "
                         "foreach=True (as in torch.optim); pass a float lr or foreach=None")
    if isinstance(betas, (tuple, list)) and len(betas) == 2:
        tensors = [isinstance(b, torch.Tensor) for b in betas]
        if any(tensors) and not all(tensors):
            raise ValueError(f"{where}: betas must be either both floats or both Tensors, "
                             f"got {betas!r}")
        if all(tensors) and foreach:
            raise ValueError(f"{where}: betas[0] as a Tensor is not supported for "
                             "capturable=False and foreach=True (as in torch.optim); pass "
                             "float betas or foreach=None")


def tensor_betas(row: Row, arguments: dict) -> None:
    """Tensor betas as torch's Adam and AdamW constructors keep them: 0-d (a 1-element
    tensor of another shape is squeezed), so that param groups read the same."""
    betas = arguments.get("betas")
    if row.name in _TENSOR_BETAS and isinstance(betas, (tuple, list)) and len(betas) == 2:
        arguments["betas"] = tuple(b.squeeze() if isinstance(b, torch.Tensor) and b.dim()
                                   and b.numel() == 1 else b for b in betas)


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


def params(index: int, group: dict, spec, device_type: str | None, items=None) -> None:
    """Every param of a new group (or ``items``, (j, param) of it): real floating point of
    a supported dtype or complex (stepped as real pairs), dense (in any order of its
    dimensions), on the CPU or a CUDA device, the group on one kind of device (and the
    optimizer's), each able to take the group's ``state_dtype`` and ``master_weights``.
    Params on the meta device are let through: they are checked again when they first
    have a grad, after ``module.to_empty()`` gave them memory."""
    devices = []
    state_dtype, mode = storage_policy(group)["state_dtype"], storage_mode(group)
    items = list(enumerate(group["params"])) if items is None else items
    for j, p in items:
        where = f"param group {index}, param {j} (shape {tuple(p.shape)})"
        memory = local(p)
        name = str(_COMPLEX.get(p.dtype, p.dtype)).replace("torch.", "")
        if p.dtype.is_complex and p.dtype not in _COMPLEX:
            raise TypeError(f"{where} is {p.dtype}: fusedopt steps complex64 and complex128 "
                            "params (as real pairs); convert it (.to(torch.complex64))")
        if p.dtype.is_complex and spec.factored is not None:
            raise TypeError(f"{where} is {p.dtype}: {spec.class_name} factors the second "
                            "moment of real params (as torch.optim's does); step the real "
                            "and imaginary parts as real params (torch.view_as_real)")
        if name not in spec.dtypes:
            raise TypeError(f"{where} has dtype {p.dtype}; fusedopt.torch steps "
                            f"{', '.join(spec.dtypes)} params: convert it (.float())")
        if p.dtype in _COMPLEX and state_dtype not in ("param", "float32", "float64"):
            raise ValueError(f"{where} is {p.dtype}, whose state is complex: state_dtype "
                             f"must be None, 'float32' or 'float64', got {state_dtype!r}")
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
        if memory.is_meta:
            continue
        if memory.device.type not in ("cpu", "cuda"):
            raise TypeError(f"{where} is on {memory.device}; fusedopt steps CPU and CUDA "
                            "tensors")
        if not _layout.dense(memory):
            raise ValueError(f"{where} has gaps or overlaps in its memory (strides "
                             f"{tuple(memory.stride())}): fusedopt updates a param in place "
                             "as one block of memory, in any order of its dimensions "
                             "(contiguous, channels_last, transposed); make it one "
                             "(.contiguous()) before building the optimizer")
        devices.append((j, memory.device))
    kinds = sorted({d.type for _, d in devices})
    if len(kinds) > 1:
        first = {t: next((j, d) for j, d in devices if d.type == t) for t in kinds}
        raise ValueError(f"param group {index} mixes CPU and CUDA tensors (param "
                         f"{first['cpu'][0]} is on cpu, param {first['cuda'][0]} on "
                         f"{first['cuda'][1]}); give each device its own optimizer")
    if kinds and device_type is not None and kinds[0] != device_type:
        raise ValueError(f"param group {index} is on {kinds[0]} but the optimizer's other "
                         f"groups are on {device_type}; give each device its own optimizer")


def placed(index: int, group: dict, items: list, spec, device_type: str | None) -> None:
    """Params about to be stepped for the first time ((j, param) of group ``index``): the
    checks of :func:`params`, now that they have memory (not on the meta device)."""
    for j, p in items:
        if local(p).is_meta:
            raise ValueError(f"param group {index}, param {j} (shape {tuple(p.shape)}) is "
                             "on the meta device, with no memory to update: materialize "
                             "the model first (module.to_empty(device=...), then initialize "
                             "it), keeping the same Parameter objects")
    params(index, group, spec, device_type, items)


def factored_layouts(index: int, items: list, layouts: list, spec) -> None:
    """Params of an optimizer with factored moments: C-contiguous at rank >= 2, as the
    factors are of the last two dimensions in the param's own order."""
    for (j, p), layout in zip(items, layouts):
        if layout is not None and p.dim() >= 2:
            raise ValueError(f"param group {index}, param {j} (shape {tuple(p.shape)}) is "
                             f"not contiguous (strides {tuple(p.stride())}); "
                             f"{spec.class_name} factors the second moment along the last "
                             "two dimensions and steps contiguous params: make it "
                             "contiguous (.contiguous()) before building the optimizer")


def grad(index: int, j: int, p, g) -> None:
    """A grad that the engine's own checks would not name in torch's terms."""
    where = f"param group {index}, param {j} (shape {tuple(p.shape)})"
    if g.layout != torch.strided:
        raise TypeError(f"{where} has a sparse grad ({g.layout}); fusedopt steps dense grads: "
                        "use torch.optim.SparseAdam or a dense embedding (sparse=False)")


def two_dimensional(row, groups) -> None:
    """Muon orthogonalizes each update as a matrix: as torch.optim.Muon, every param must
    be 2-D, checked when the optimizer is made."""
    for group in groups:
        for p in group["params"]:
            if p.is_complex():
                raise RuntimeError(f"{row.name} does not support complex parameters (as "
                                   f"{row.peer.replace(':', '.')}): Newton-Schulz "
                                   "orthogonalizes real matrices; step the real and "
                                   "imaginary parts as separate params")
            if p.ndim != 2:
                raise ValueError(f"{row.name} steps 2-D params only (each update is "
                                 f"orthogonalized as a matrix), as {row.peer.replace(':', '.')}"
                                 f"; got a param of shape {tuple(p.shape)}: give biases, "
                                 "norms and embeddings to another optimizer (AdamW)")
