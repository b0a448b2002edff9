"""fusedopt.torch under torch.compile: the step is one custom op, ``torch.ops.fusedopt.step``.

The step builds launch tables and calls Numba or CUDA kernels through memory addresses,
nothing a graph can hold: traced, it broke the graph some 20 times. So what torch.compile
sees of a step is one call of a custom op (``torch.library.custom_op``) that takes the
optimizer's tensors and plain scalars and says which it writes (``mutates_args``): every
param, its state tensors and the step counters. Its fake kernel writes nothing and returns
nothing, so tracing needs no kernel, ``fullgraph=True`` holds, and the compiled code around
the step (a training step's forward) keeps its graph.

The op's first argument is the optimizer's handle, a plain int: the op's kernel steps that
optimizer's engine, which holds the launch tables. Compiled code may hand the op copies of
the tensors (functionalization clones what an op writes when it cannot prove the write
safe, as aot_eager does): the kernel then copies them into the optimizer's own tensors, steps
those, and copies the results back, so the op is a function of its arguments, as
``torch.library.opcheck`` checks. Without copies (inductor, on the tensors themselves) it is
the eager step.

Each step reads the group's values (lr and the others) when it runs, as the eager step does:
a new lr (a scheduler's) needs no new graph. The traced code reads the param groups as
``vars(opt)["param_groups"]``: through the attribute, dynamo's handling of torch optimizers
guards on every group value (a new graph for each new lr) and, for CUDA params without
state, writes ``capturable=True`` into the groups. A state made at the first step, a param
that gets its first grad, a param group added: the traced code reads ``state`` and the
params' grads, so torch.compile traces the step again. GradScaler's ``grad_scale`` and
``found_inf`` are read from the optimizer when the op runs, as the eager step reads them.

Two kinds of params are not put through the op, and their optimizer's step runs eagerly, at
one graph break that names the reason (``fullgraph=True`` is refused with it): FSDP2's
DTensor params (DTensor would need a sharding rule for the op) and complex params (torch
2.13's inductor fails on a custom op that writes complex tensors, "auto_functionalized_v2
was not removed", whatever the op).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Optional

import torch

from ._local import is_distributed

REASON = ("fusedopt's step over DTensor or complex params runs eagerly: its op would need a "
          "DTensor sharding rule, and inductor cannot compile an op that writes complex "
          "tensors")

#: Counter tensors of the optimizer (``step`` and NAdam's ``mu_product`` per param): the op
#: takes the buffers they are views of, so that no two arguments share memory.
_COUNTERS = ("step", "mu_product")

_LIVE: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)

#: The eager step behind ``torch.compiler.disable``, for a traced step that runs eagerly
#: (made with the first optimizer: the wrapper imports torch._dynamo, most of a second that
#: an import of fusedopt.torch should not cost). An eager step calls ``opt._fused`` itself:
#: the wrapper costs more than a microsecond a call, and only tracing needs it.
_untraced = None


def _eager(opt) -> None:
    opt._fused()


def prepare(opt) -> None:
    """Give ``opt`` its op handle (a new one for a copy or an unpickled optimizer), and make
    the untraced eager step once."""
    global _untraced
    handle = next(_HANDLES)
    _LIVE[handle] = opt
    opt._op_handle = handle
    if _untraced is None:
        _untraced = torch.compiler.disable(_eager, reason=REASON)


def step(opt) -> None:
    """The step's body, with grad disabled: eager, or one op call where torch.compile
    traces it."""
    if not torch.compiler.is_compiling():
        # What ``with torch.no_grad():`` does, without its two context objects and their
        # calls (a microsecond of a small step): the mode read, set, and set back.
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            refuse_capture(opt)
            opt._fused()
        finally:
            torch._C._set_grad_enabled(enabled)
        return
    with torch.no_grad():
        params, grads, states, counters = arguments(opt)
        if any(is_distributed(p) or p.is_complex() for p in params):
            _untraced(opt)
            return
        torch.ops.fusedopt.step(opt._op_handle, params, grads, states, counters)


def refuse_capture(opt) -> None:
    """A step of CUDA params while the current stream is being captured into a CUDA graph
    raises: its kernels take the step's scalars (bias corrections, lr) from the host, and a
    replayed graph would repeat the captured step's values."""
    if opt.__dict__.get("_device_type") == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("fusedopt's step cannot be captured in a CUDA graph: its kernels "
                           "take each step's scalars from the host, and a replay would repeat "
                           "the captured step's values; step it outside the captured region")


def arguments(opt) -> tuple:
    """The op's tensors for ``opt``: every param once (group order), its grad or None, the
    state tensors of each param that has state (key order, the counters left out) and the
    counter buffers. The same rule gives the op's kernel the optimizer's own tensors."""
    params, ids = [], set()
    for group in vars(opt)["param_groups"]:
        for p in group["params"]:
            if id(p) not in ids:
                ids.add(id(p))
                params.append(p)
    states = []
    for p in params:
        entry = opt.state.get(p)
        if isinstance(entry, dict):
            states.extend(v for k, v in entry.items()
                          if k not in _COUNTERS and isinstance(v, torch.Tensor))
    counters = [t for steps, derived in getattr(opt, "_buffers", ())
                for t in (steps, *derived.values())]
    return params, [p.grad for p in params], states, counters


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a.shape == b.shape
            and a.stride() == b.stride())


def _check(name: str, given: list, own: list) -> None:
    if len(given) != len(own) or any(a.shape != b.shape or a.dtype != b.dtype
                                     for a, b in zip(given, own)):
        raise ValueError(f"fusedopt::step: {name} do not match the optimizer's (got "
                         f"{[(tuple(a.shape), a.dtype) for a in given]}, it holds "
                         f"{[(tuple(b.shape), b.dtype) for b in own]}); call the op with "
                         "fusedopt.torch._compile.arguments(opt)")


#: cudagraph_unsafe: inductor keeps the op out of the CUDA graphs it captures
#: (``mode="reduce-overhead"``): a replay would repeat the captured step's host scalars.
@torch.library.custom_op("fusedopt::step", mutates_args=("params", "states", "counters"),
                         tags=(torch.Tag.cudagraph_unsafe,))
def _step_op(handle: int, params: list[torch.Tensor],
             grads: list[Optional[torch.Tensor]],  # noqa: UP045 (the schema reads Optional)
             states: list[torch.Tensor], counters: list[torch.Tensor]) -> None:
    """One fused step of the optimizer ``handle``: ``params``, ``states`` and ``counters``
    are updated in place (copies of the optimizer's own tensors are stepped through them)."""
    opt = _LIVE.get(handle)
    if opt is None:
        raise RuntimeError(f"fusedopt::step: optimizer {handle} no longer exists")
    refuse_capture(opt)
    own_params, own_grads, own_states, own_counters = arguments(opt)
    _check("params", params, own_params)
    _check("states", states, own_states)
    _check("counters", counters, own_counters)
    if len(grads) != len(params):
        raise ValueError(f"fusedopt::step: {len(grads)} grads for {len(params)} params; "
                         "pass one grad (or None) per param")
    for i, (g, p) in enumerate(zip(grads, own_params)):
        if g is not None and (g.shape != p.shape or g.dtype != p.dtype):
            raise ValueError(f"fusedopt::step: grad {i} is {tuple(g.shape)} {g.dtype}, its "
                             f"param {tuple(p.shape)} {p.dtype}; pass each param's grad "
                             "(or None)")
    copies = [(a, b) for a, b in zip(params + states + counters,
                                     own_params + own_states + own_counters)
              if not _same(a, b)]
    swapped = [(p, p.grad, g) for p, g, own in zip(own_params, grads, own_grads)
               if g is not own]
    with torch.no_grad():
        # Arguments that do not match are refused above, before anything is written; a step
        # the engine refuses leaves the arguments as they came (the optimizer's own tensors
        # then hold their values, as the compiled code meant them to).
        for given, own in copies:
            own.copy_(given)
        if copies and opt._engine is not None:
            _recount(opt)
        try:
            for p, _, g in swapped:
                p.grad = g
            opt._fused()
        finally:
            for p, g, _ in swapped:
                p.grad = g
        for given, own in copies:
            given.copy_(own)


@_step_op.register_fake
def _(handle, params, grads, states, counters) -> None:
    return None  # writes its arguments in place and returns nothing


def _recount(opt) -> None:
    """The engine's per-param step counts read from the counters just copied in."""
    steps = opt._engine.steps
    for position, (buffer, k) in opt._homes.items():
        steps[position] = int(opt._buffers[buffer][0][k])
