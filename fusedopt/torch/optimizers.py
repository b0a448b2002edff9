"""One ``torch.optim.Optimizer`` subclass per row of fusedopt/torch/_names.py: torch's
signature (argument names, order, defaults), torch's group keys, the row's update rule in
the docstring."""

from __future__ import annotations

import inspect

from ..algorithms.registry import REGISTRY
from . import _checks
from ._names import POLICY, ROWS, Row
from ._schedulefree import ScheduleFree
from .optimizer import Optimizer

_DOC = """{name}: ``{peer}`` with fusedopt's fused step, torch convention.

Update, per param with grad g at its own 1-based step t::

{rule}

Signature and defaults are torch's: ``{name}(params, {args})``.
Param groups, ``add_param_group``, ``zero_grad``, ``torch.optim.lr_scheduler``,
``state_dict``/``load_state_dict`` (torch's keys: {keys}) and ``torch.amp.GradScaler``
work as with ``{peer}``; checkpoints load both ways. Params are stepped in place through
their memory (CUDA: on torch's current stream, without waiting for the device), all of one
dtype and device in one fused pass.

Flags: ``maximize`` is supported; ``foreach`` and ``fused`` are accepted and change nothing
(the step is always fused); ``capturable=True`` and ``differentiable=True`` are refused
(fusedopt/torch/_checks.py says why). Params: float32, float64, bfloat16 or float16, or
complex64/complex128 (stepped as real pairs, as torch steps them), dense in any order of
their dimensions (contiguous, channels_last, transposed: stepped in place, the state with
the param's strides), on the CPU or CUDA (one kind of device per optimizer); params on the
meta device are taken and stepped once materialized (``module.to_empty``). ``lr`` (and
betas) may be 1-element tensors, as in torch.

16-bit params (fusedopt's, keyword-only, per param group): the math runs in fp32 and each
stored value is rounded once, as torch's fused kernels do. ``state_dtype=None`` keeps state
as torch.optim does, in the param's dtype (float32 for float16 params: fusedopt keeps no
float16 state, whose range flushes small second moments to zero), or ``"float32"``,
``"bfloat16"``, ``"float64"``. ``master_weights=True`` keeps an fp32 master of each 16-bit
param (state key ``"master"``; the param is written from it), ``"remainder"`` (bfloat16)
the same bits as an int16 ``"remainder"``; a master keeps float32 state. Without a
master, ``stochastic_rounding=True`` rounds every 16-bit store stochastically (random bits
keyed on ``seed``, the param's position and its step) and ``kahan_summation=True`` keeps
what each store rounded away in a ``"compensation"`` (the param's dtype) and adds it back
at the next step. ``seed`` is the optimizer's: every group carries the same value.

Example::

    >>> import torch, fusedopt.torch
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = fusedopt.torch.{name}([w])
    >>> w.grad = torch.tensor([1.0, -1.0, 0.0])
    >>> opt.step()
"""


def _signature(row: Row) -> inspect.Signature:
    kind, kw = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(
        [inspect.Parameter("self", kind), inspect.Parameter("params", kind)]
        + [inspect.Parameter(k, kind, default=v) for k, v in row.positional]
        + [inspect.Parameter(k, kw, default=v) for k, v in row.keyword + POLICY])


def _doc(row: Row, signature: inspect.Signature) -> str:
    args = str(signature)[1:-1].split(", ", 2)[2]
    keys = ", ".join(["step"] * row.counts_steps + [d.key for d in row.derived]
                     + [key for _, key in row.state])
    rule = "\n".join("    " + line for line in row.rule.splitlines())
    peer = row.peer.replace(":", ".")
    return _DOC.format(name=row.name, peer=peer, rule=rule, args=args, keys=keys)


def optimizer_class(row: Row) -> type:
    """The torch class of ``row`` (on :class:`ScheduleFree` for an optimizer with train and
    eval points)."""
    signature = _signature(row)
    base = ScheduleFree if REGISTRY[row.registry].switch else Optimizer

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        params = arguments.pop("params")
        _checks.tensor_betas(row, arguments)
        base.__init__(self, params, {**arguments, **dict(row.fixed)})
        if REGISTRY[row.registry].matrix is not None:
            _checks.two_dimensional(row, self.param_groups)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{row.name}.__init__"
    return type(row.name, (base,), {"__init__": __init__, "_row": row,
                                         "__doc__": _doc(row, signature),
                                         "__module__": "fusedopt.torch"})


CLASSES = {name: optimizer_class(row) for name, row in ROWS.items()}
