"""Functional steps for users who keep their own state arrays.

``update(name, params, grads, states, step=t, **hyper)`` runs one fused step of registered
optimizer ``name`` over lists of arrays; ``adam_step`` and friends are shorthands for one
tensor. State arrays are updated in place and must match their param's shape; their dtype
is the state dtype (fusedopt/memory/storage.py: float32 or bfloat16 beside 16-bit and float32
params, float64 beside float64 ones), the same for every array of the call.
"""

from __future__ import annotations

from .algorithms.registry import CONVENTIONS, lookup
from .engine import validate as _validate
from .engine.clip import Clipping
from .engine.engine import Engine
from .memory import quant as _quant
from .memory import storage as _storage
from .memory.arrays import kind_of


def update(name, params, grads, states, *, step, convention="keras", backend="auto",
           clipnorm=None, global_clipnorm=None, clipvalue=None, grad_scale=None,
           master_weights=False, stochastic_rounding=False, kahan_summation=False, seed=0,
           state_dtype=None, **hyper):
    """One step of optimizer ``name`` at 1-based ``step`` over lists of arrays, in place.

    ``states[i]`` is the list of state arrays of ``params[i]`` in slot order (for Adam:
    m, v, and vhat with amsgrad), then, with ``master_weights`` True or "remainder", the
    param's float32 master or int16 remainder. The state dtype is the arrays' (checked:
    one for the whole call). Unspecified hyperparameters take Keras' defaults.
    ``clipnorm`` / ``global_clipnorm`` / ``clipvalue`` clip the grads as Keras does (at
    most one; ``global_clipnorm`` spans every grad of this call), without modifying them.
    ``grad_scale``: the grads carry this loss scale and are divided by it in the pass; if
    any is inf or NaN nothing changes. ``stochastic_rounding`` and ``kahan_summation``
    as the optimizer classes take them (with Kahan summation the param's compensation
    array ends its state list); the random bits are keyed on ``seed``, ``step``, the
    param's index in ``params``, the element's index and the array, so a call gives the
    bits of the same step of an optimizer holding the same params in the same order.
    ``state_dtype="q8"`` or ``"q4"``: every optimizer slot is a quantized buffer
    (fusedopt/memory/quant.py) of its param, whatever its size, but a ``float_state`` one
    (schedule-free's z), a float32 array; :func:`quantized_state` makes the initial ones.
    Returns True when the step was applied.
    """
    spec = lookup(name)
    clipping = Clipping(clipnorm=clipnorm, global_clipnorm=global_clipnorm,
                        clipvalue=clipvalue)
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step is the 1-based step count, an int >= 1, got {step!r}")
    params, grads, states = list(params), list(grads), [list(s) for s in states]
    if not len(params) == len(grads) == len(states):
        raise ValueError(f"got {len(params)} params, {len(grads)} grads and {len(states)} "
                         "state lists; they must match one to one")
    mode = _storage.mode_of(master_weights, stochastic_rounding, kahan_summation)
    quantized = state_dtype in _quant.QUANTIZED
    if state_dtype is not None and not quantized:
        raise ValueError(f"state_dtype is None (the arrays' dtype), 'q8' or 'q4' (or "
                         f"'q8-dynamic', 'q4-power': the other map; 'q8-bitsandbytes') here, got {state_dtype!r}")
    engine = Engine(spec, convention, backend=backend, clipping=clipping,
                    state_dtype=state_dtype if quantized else _state_dtype(params, states,
                                                                           mode),
                    master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                    kahan_summation=kahan_summation, seed=seed, min_quantized_size=0)
    engine.add_group(hyper, where="")
    for i, (p, g) in enumerate(zip(params, grads)):  # grads checked before anything is held
        _validate.check_pair(i, p, p, spec)
        _validate.check_pair(i, p, g, spec, mode=engine.storage_of(i, p).mode)
    engine.add_params(params, states=states)
    engine.iterations = step - 1
    return engine.step(grads, grad_scale=grad_scale)


def quantized_state(name, param, state_dtype="q8", *, convention="keras",
                    master_weights=False, **hyper) -> list:
    """The initial state arrays of ``param`` for :func:`update` with quantized
    ``state_dtype`` ("q8" or "q4"): one buffer per slot of optimizer ``name`` with these
    hyperparameters (filled with its initial value), then the master slot if any."""
    engine = Engine(lookup(name), convention, state_dtype=state_dtype,
                    master_weights=master_weights, min_quantized_size=0)
    engine.add_group(hyper, where="")
    engine.add_params([param])
    return list(engine.states[0])


def _state_dtype(params, states, mode: str):
    """The state dtype the arrays say: None when every param's state is in its default
    dtype (so float32 and float64 params may share a call), else the dtype of the first
    optimizer slot given; the engine then checks every array against it."""
    extra = 1 if mode in ("master", "remainder", "kahan") else 0
    found = []
    for p, slots in zip(params, states):
        if len(slots) > extra and kind_of(slots[0]).is_array(slots[0]) and \
                kind_of(p).is_array(p):
            found.append((kind_of(p).dtype(p), kind_of(slots[0]).dtype(slots[0])))
    if all(state == _default(param) for param, state in found):
        return None
    return found[0][1]


def _default(param: str):
    return _storage.default_state_dtype(param) if param in _storage.PARAM_DTYPES else None


def adam_step(param, grad, m, v, vhat=None, *, step, learning_rate=0.001, beta_1=0.9,
              beta_2=0.999, epsilon=1e-7, weight_decay=None, convention="keras",
              backend="auto"):
    """One fused Adam step on one tensor, in place (AMSGrad when ``vhat`` is given)."""
    slots = [m, v] if vhat is None else [m, v, vhat]
    update("adam", [param], [grad], [slots], step=step, convention=convention,
           backend=backend, learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
           epsilon=epsilon, weight_decay=weight_decay, amsgrad=vhat is not None)
