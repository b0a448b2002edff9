"""``stateless_apply``: the fused step on copies of the values it is given.

Keras' ``stateless_apply(optimizer_variables, grads, trainable_variables)`` runs ``apply``
inside a ``StatelessScope`` that maps every variable to the value passed in; a variable's
``assign`` records its new value in the scope instead of writing the variable, and the
function returns the scope's values. The caller's tensors and the variables are never
written.

The fused step updates arrays in place, so here it runs on copies: each variable this step
writes (the trainable variables it steps and their optimizer variables) is assigned a copy of
its scope value, and a fused engine made for this call steps those copies, which are then
the scope's new values. Everything else in ``apply`` (loss scaling, gradient accumulation,
``iterations``, Nadam's ``u_product``, EMA) is Keras' code going through the scope.
"""

from __future__ import annotations

import keras


def _own_copy(variable) -> None:
    """Assign ``variable`` (in the current StatelessScope) a copy of its value there."""
    import torch

    value = keras.src.backend.get_stateless_scope().get_current_value(variable)
    if value is None:  # not mapped: the variable's own value
        value = variable._value
    variable.assign(value.detach().clone(memory_format=torch.contiguous_format))


def step(optimizer, grads, variables) -> None:
    """One fused step of ``optimizer`` on the StatelessScope's values of ``variables``: of
    each of its engines (one per route: fusedopt/keras/_routes.py) over the variables its
    route takes."""
    for lane in optimizer._fused.lanes:
        _step(optimizer, lane, grads, variables)


def _step(optimizer, fused, grads, variables) -> None:
    built = optimizer._trainable_variables
    names = [fused.route.state_attributes[s] for s in fused.engine.hypers[0].slots]
    pairs = [(g, v) for g, v in zip(grads, variables) if fused.route.holds(optimizer, v)]
    fused.route.before_step(optimizer, [v for _, v in pairs])  # through the scope
    for _, variable in pairs:
        index = optimizer._get_variable_index(variable)
        own = [getattr(optimizer, n)[index] for n in names]
        if fused.rounding.kahan_summation:
            own.append(optimizer._compensations[index])
        for written in (variable, *own):
            if written is not None:
                _own_copy(written)
    # An engine over the variables' values in the scope (the copies, for those stepped),
    # with this step's hyperparameters, clipping and step count read through the scope.
    copies = type(fused)(optimizer, fused.backend, fused.rounding, fused.quantized,
                         fused.route)
    copies.add(optimizer, built, ema=False)
    count = copies.iterations.get()
    steps = optimizer.gradient_accumulation_steps
    copies.engine.iterations = count // steps if steps else count
    positions, arrays = [], []
    for grad, variable in pairs:
        position = copies.position.get(optimizer._get_variable_index(variable))
        if position is None:  # overwrite_with_gradient: Keras assigned it the gradient
            continue
        tensor = copies.tensors[position]
        positions.append(position)
        arrays.append(grad.to(tensor.dtype) if grad.dtype != tensor.dtype else grad)
    if positions:
        copies.engine.step(arrays, positions)
