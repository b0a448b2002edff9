"""Unfused backend: the registry's array expressions, one tensor at a time.

16-bit storage the way an unfused program does it: the param, grad and state are widened
to the compute type as whole arrays, the expressions run on those copies, and the results
are rounded back (to nearest even, by the array library; a master's 16-bit copy to nearest
with ties away, as the fused backends do). Kahan summation adds the compensation array to
the widened param and refills it from what the cast lost; stochastic rounding draws the
fused backends' bits as uint32 array expressions (fusedopt/backends/rounding.py).
Quantized state (``state_dtype="q8"``/``"q4"``, NumPy) the way bitsandbytes' CPU path does
it: decode each slot to a float32 array, run the expressions, encode each slot (its blocks'
absmax, then the nearest codes), each a pass of its own.
"""

from __future__ import annotations

import numpy as np

from ..memory import quant as _quant
from ..memory.group import NO_CLIP, GradClip, Group, as_storage, step_storage
from ..memory.steps import as_rows
from . import rounding as _rounding

name = "unfused"


def _xp(array):
    if isinstance(array, np.ndarray):
        return np
    import cupy
    return cupy


def accepts(array) -> bool:
    return True


def group(storage, params, states, streams=None) -> Group:
    return Group(as_storage(storage), list(params), [list(s) for s in states], 0,
                 np.zeros((2 + (len(states[0]) if states else 0), 0), np.int64),
                 np.zeros(0, np.int64), streams=streams)


def _clipped(xp, g, scale, limit, compute):
    """Keras' clipping as array expressions: g * scale, then clamp to [-limit, limit]."""
    if scale is not None:
        g = g * (compute(scale) if isinstance(scale, float) else scale.astype(compute))
    if limit != np.inf:
        g = xp.clip(g, -compute(limit), compute(limit))
    return g


def _nearest_away(xp, master, dtype):
    """float32 ``master`` rounded to the 16-bit ``dtype``, ties away from zero."""
    even = master.astype(dtype)
    back = even.astype(np.float32)
    up = (even.view(np.uint16) + np.uint16(1)).view(dtype)
    tie = xp.isfinite(master) & (xp.abs(master) > xp.abs(back)) & (
        xp.abs(master).astype(np.float64) - xp.abs(back).astype(np.float64)
        == xp.abs(up.astype(np.float64)) - xp.abs(master).astype(np.float64))
    return xp.where(tie, up, even)


def _operands(group: Group, grads, clip: GradClip, t: int, n_slots: int, st, compute,
              signed=()):
    """Tensor ``t``'s (xp, compute-type param, clipped grad, state copies) as the step sees
    them (the param through its mode: master, remainder, Kahan compensation; quantized
    slots decoded, ``signed`` saying which map each takes)."""
    p, g, slots = group.params[t], grads[t], group.states[t]
    xp = _xp(p)
    g = _widened(g, compute)
    if clip.active:
        scale = clip.scales
        if scale is not None and not isinstance(scale, float):
            scale = scale[t]
        g = _clipped(xp, g, scale, clip.limit, compute)
    if st.quantized:  # decoded in a pass of its own: the baseline a fused step saves
        state = [_widened(s, compute) if sign is None else
                 _quant.dequantize(s, p.size, st.state, sign).reshape(p.shape)
                 for s, sign in zip(slots[:n_slots], signed)]
    else:
        state = [_widened(s, compute) for s in slots[:n_slots]]
    if st.mode == "master":
        work = slots[n_slots]
    elif st.mode == "remainder":
        bits = (p.view(np.uint16).astype(np.uint32) << 16) + \
            slots[n_slots].astype(np.int32).view(np.uint32)
        work = bits.view(np.float32)
    elif st.mode == "kahan":
        work = _widened(p, compute) + _widened(slots[n_slots], compute)
    else:
        work = _widened(p, compute)
    return xp, work, g, state


def factor(spec, flags, row: tuple, group: Group, grads, clip: GradClip = NO_CLIP) -> None:
    """Move the row and column factors of ``spec``'s factored moment (fusedopt/algorithms/
    spec.py, ``Factored``) as whole-array expressions; each slice's denominator kept in the
    group's scratch for the passes after."""
    st = step_storage(group, grads)
    compute = np.dtype(st.compute).type
    declared, f = spec.factored, spec.named_flags(flags)
    zeros = (0.0,) * len(spec.reductions.scalar_names)
    named = spec.Scalars(*(compute(x) for x in row), *(compute(0) for _ in zeros))
    wide = spec.Scalars(*map(float, row), *zeros)
    names = spec.slots(flags)
    denominators = []
    for t in range(len(group.params)):
        xp, _, g, state = _operands(group, grads, clip, t, len(names), st, compute)
        if g.ndim < 2 or g.size == 0:  # no factors, or no element to read them
            denominators.append(None if g.ndim < 2 else xp.ones(1, compute))
            continue
        squares = declared.square(g, named, f).astype(np.float64)
        r, c = group.states[t][names.index(declared.row)], \
            group.states[t][names.index(declared.col)]
        rows = (squares.sum(axis=-1, keepdims=True) / g.shape[-1]).astype(compute)
        cols = (squares.sum(axis=-2, keepdims=True) / g.shape[-2]).astype(compute)
        r[...] = declared.moment(r.astype(compute), rows, named, f)
        c[...] = declared.moment(c.astype(compute), cols, named, f)
        row_mean = r.astype(np.float64).mean(axis=-2, keepdims=True)
        denominators.append(xp.asarray(declared.denominator(xp, row_mean, wide, f))
                            .astype(compute))
    group.scratch["factor_denominators"] = denominators


def _estimated(spec, flags, group, t, g, state, named):
    """Tensor ``t``'s state with its ``full`` slot replaced by each element's second-moment
    estimate after this step (the argument the rules of a factored moment read)."""
    declared, f, names = spec.factored, spec.named_flags(flags), spec.slots(flags)
    slots = dict(zip(names, state))
    m = group.scratch["factor_denominators"][t]
    if m is None:
        full = declared.moment(slots[declared.full], declared.square(g, named, f), named, f)
    else:
        full = declared.estimate(slots[declared.row], slots[declared.col], m, named, f)
    return {**slots, declared.full: full}


def reduce(spec, flags, row: tuple, group: Group, grads, clip: GradClip = NO_CLIP):
    """(reductions, tensors) float64: the per-tensor sums of ``spec``'s reductions, as its
    ``reductions.unfused`` array expressions, one tensor at a time (for the grad pre-pass,
    fusedopt/algorithms/gradsums.py, of each grad widened to float64, not clipped)."""
    if spec.reductions.grads_as_stored:
        return _grad_sums(spec, flags, group, grads)
    st = step_storage(group, grads)
    compute = np.dtype(st.compute).type
    n_slots = len(spec.slots(flags))
    named = spec.Scalars(*(compute(x) for x in row),
                         *(compute(0) for _ in spec.reductions.scalar_names))
    sums = []
    signed = spec.signed_slots(flags) if st.quantized else ()
    for t in range(len(group.params)):
        xp, work, g, state = _operands(group, grads, clip, t, n_slots, st, compute, signed)
        if spec.factored is not None:
            state = list(_estimated(spec, flags, group, t, g, state, named).values())
        copies = dict(zip(spec.slots(flags), (a.copy() for a in state)))  # never written
        terms = spec.reductions.unfused(xp, work.copy(), g.copy(), copies, named,
                                        spec.named_flags(flags))
        sums.append([xp.sum(xp.asarray(x, dtype=np.float64)) for x in terms])
    if not sums:
        return np.zeros((len(spec.reductions.names), 0), np.float64)
    xp = _xp(group.params[0])
    return xp.stack([xp.stack(column) for column in zip(*sums)])


def _grad_sums(spec, flags, group: Group, grads):
    """:func:`reduce` of a rule of the grads as stored: each grad widened to float64, its
    terms summed in float64 (on the grads' device)."""
    if not grads:
        return np.zeros((len(spec.reductions.names), 0), np.float64)
    xp = _xp(grads[0])
    named = spec.Scalars(*(0.0 for _ in spec.row_names))
    with np.errstate(invalid="ignore"):  # g - g of an inf: the NaN this sum is for
        sums = [[xp.sum(x) for x in spec.reductions.unfused(
            xp, None, g.astype(xp.float64), {}, named, spec.named_flags(flags))]
            for g in grads]
    return xp.stack([xp.stack(column) for column in zip(*sums)])


def step(spec, flags, steps, group: Group, grads, clip: GradClip = NO_CLIP,
         step: int = 1) -> None:
    st = step_storage(group, grads)
    compute = np.dtype(st.compute).type
    n_slots = len(spec.slots(flags))
    named_flags = spec.named_flags(flags)
    per_tensor = isinstance(steps, np.ndarray)  # a row per tensor (per-tensor reductions)
    if not per_tensor:
        named = spec.Scalars(*(compute(x) for x in as_rows(steps, len(group.params))
                               .scalars()))
    signed = spec.signed_slots(flags) if st.quantized else ()
    if st.mode == "stochastic" and any(sign is not None for sign in signed):
        raise ValueError("the unfused backend rounds quantized state to nearest only: use "
                         "backend='cpu' for stochastic rounding with state_dtype "
                         f"{st.state!r}, or drop stochastic_rounding")
    for t, (p, slots) in enumerate(zip(group.params, group.states)):
        if per_tensor:
            named = spec.Scalars(*(compute(x) for x in steps[t]))
        xp, work, g, state = _operands(group, grads, clip, t, n_slots, st, compute, signed)
        if spec.factored is not None:  # the full slot gets the estimate; only rank < 2 keeps it
            estimated = _estimated(spec, flags, group, t, g, state, named)
            keeps = group.scratch["factor_denominators"][t] is None
            state = [estimated[n] if n == spec.factored.full and keeps else a
                     for n, a in zip(spec.slots(flags), state)]
            spec.unfused(xp, work, g, estimated, named, named_flags)
        else:
            spec.unfused(xp, work, g, dict(zip(spec.slots(flags), state)), named,
                         named_flags)
        if st.mode == "stochastic":
            element = _rounding.element_hashes(xp, _rounding.stream_base(
                group.streams[t] if group.streams is not None else 0, step), p.size)
            p[...] = _rounding.round_stochastic(xp, work.ravel(), p.dtype, _rounding.array_bits(
                element, 0)).reshape(p.shape)
            for k, (s, new) in enumerate(zip(slots, state)):
                s[...] = _rounding.round_stochastic(xp, new.ravel(), s.dtype, _rounding.array_bits(
                    element, 1 + k)).reshape(s.shape)
            continue
        signs = signed or (None,) * n_slots
        for s, new, sign in zip(slots, state, signs):
            if sign is not None:  # encoded in a pass of its own: the new absmax, the codes
                s[...] = _quant.quantize(new, st.state, sign)
            elif new is not s:
                s[...] = new.astype(s.dtype)
        if st.mode == "master":
            p[...] = _nearest_away(xp, work, p.dtype)
        elif st.mode == "remainder":
            hi = _nearest_away(xp, work, p.dtype)
            p[...] = hi
            low = work.view(np.uint32) - (hi.view(np.uint16).astype(np.uint32) << 16)
            slots[n_slots][...] = low.astype(np.uint16).view(np.int16)
        elif st.mode == "kahan":
            p[...] = work.astype(p.dtype)
            slots[n_slots][...] = (work - p.astype(compute)).astype(p.dtype)
        elif work is not p:
            p[...] = work.astype(p.dtype)


def _widened(a, compute):
    """``a`` itself when it is of the compute type, else a widened copy."""
    return a if a.dtype == np.dtype(compute) else a.astype(compute)
