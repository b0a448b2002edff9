"""Functional steps for users who keep their own state arrays.

``update(name, params, grads, states, step=t, **hyper)`` runs one fused step of registered
optimizer ``name`` over lists of arrays; ``adam_step`` and friends are shorthands for one
tensor. State arrays are updated in place and must match their param's shape and dtype.
"""

from __future__ import annotations

from . import _step
from ._clip import Clipping
from ._registry import CONVENTIONS, lookup


def update(name, params, grads, states, *, step, convention="keras", backend="auto",
           clipnorm=None, global_clipnorm=None, clipvalue=None, **hyper):
    """One step of optimizer ``name`` at 1-based ``step`` over lists of arrays, in place.

    ``states[i]`` is the list of state arrays of ``params[i]`` in slot order (for Adam:
    m, v, and vhat with amsgrad). Unspecified hyperparameters take Keras' defaults.
    ``clipnorm`` / ``global_clipnorm`` / ``clipvalue`` clip the grads as Keras does (at
    most one; ``global_clipnorm`` spans every grad of this call), without modifying them.
    """
    spec = lookup(name)
    clipping = Clipping(clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                        clipvalue=clipvalue)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step is the 1-based step count, an int >= 1, got {step!r}")
    known = {h.name for h in spec.hypers}
    if set(hyper) - known:
        raise TypeError(f"{spec.name} got unexpected arguments {sorted(set(hyper) - known)}; "
                        f"it takes {sorted(known)}")
    hp = spec.defaults()
    hp.update(hyper)
    for h in spec.hypers:
        h.validate(hp[h.name], convention)
    spec.check(hp, convention)
    flags = spec.flags(hp, convention)
    names = spec.slots(flags)
    params, grads, states = list(params), list(grads), [list(s) for s in states]
    if not len(params) == len(grads) == len(states):
        raise ValueError(f"got {len(params)} params, {len(grads)} grads and {len(states)} "
                         "state lists; they must match one to one")
    for i, (p, g, s) in enumerate(zip(params, grads, states)):
        _step.check_pair(i, p, g, spec)
        _step.check_state(i, p, s, names)
    grads = [_step.contiguous(g) for g in grads]
    backend_module = _step.resolve_backend(backend, params, grads)
    scalars = spec.scalars(hp, step, convention)
    by_dtype: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        by_dtype.setdefault(str(p.dtype), []).append(i)
    groups = [backend_module.group(dtype, [params[i] for i in members],
                                   [states[i] for i in members])
              for dtype, members in by_dtype.items()]
    _step.run(spec, flags, scalars, backend_module, groups,
              [[grads[i] for i in members] for members in by_dtype.values()], clipping)


def adam_step(param, grad, m, v, vhat=None, *, step, learning_rate=0.001, beta_1=0.9,
              beta_2=0.999, epsilon=1e-7, weight_decay=None, convention="keras",
              backend="auto"):
    """One fused Adam step on one tensor, in place (AMSGrad when ``vhat`` is given)."""
    slots = [m, v] if vhat is None else [m, v, vhat]
    update("adam", [param], [grad], [slots], step=step, convention=convention,
           backend=backend, learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
           epsilon=epsilon, weight_decay=weight_decay, amsgrad=vhat is not None)
