"""Train and eval points: the params of an optimizer whose spec names a ``switch``
(schedule-free) hold the point its step needs (y, "train") or the point to evaluate (x,
"eval"). Moving between them is one fused pass per dtype, the switch optimizer's rule
(fusedopt/algorithms/schedulefree.py) stepped by an engine made for the call: same params,
same storage (a master or remainder is the switch's too, shared), its "grad" the z slot.

Eval keeps each y in an array of z's dtype (``engine.kept``; the state dtype, float32
beside quantized state) and train puts it back, bit for bit: lerp(lerp(y, z, 1 - 1/b1), z,
1 - b1) rounds twice and is not y. Without kept y's (a checkpoint of the schedulefree
package, taken in eval mode) train lerps back as that package does. The kept y's cost one
array per param while in eval mode only.
"""

from __future__ import annotations

import numpy as np

from ..algorithms.registry import lookup
from ..memory.arrays import kind_of
from ..memory.storage import grad_dtypes


def switch(engine, to_eval: bool) -> bool:
    """Move ``engine``'s params to x (``to_eval``) or back to y; False if they are there
    already. Refused, naming the fix and changing nothing, for an optimizer without two
    points, for params whose z cannot be read as their grad (a state dtype other than the
    param's, without a master) and for Kahan-compensated params."""
    spec = engine.spec
    if spec.switch is None:
        raise ValueError(f"{spec.name} has no train and eval points; train()/eval() are for "
                         "the schedule-free optimizers")
    if engine.evaluating == to_eval:
        return False
    kept = engine.kept
    if engine.params:
        name, beta = spec.switch
        sw = type(engine)(lookup(name), engine.convention, backend=engine.backend,
                          seed=engine.seed)
        grads, order, made = [], [], []
        for index, group in enumerate(engine.hypers):
            members = [pos for pos, g in enumerate(engine.group_of) if g == index]
            saved = to_eval or (kept is not None and all(kept[pos] is not None
                                                         for pos in members))
            sw.add_group({"beta_1": group.hyper[beta], "to_eval": to_eval, "saved": saved},
                         where=f"group {index}: ")
            sw.hypers[index].state_dtype, sw.hypers[index].mode = group.state_dtype, group.mode
            states = []
            for pos in members:
                _check_readable(engine, pos)
                y = ([kind_of(engine.params[pos]).zeros(engine.params[pos],
                                                        kept_dtype(engine, pos))]
                     if to_eval else [kept[pos]] if saved else [])
                master = [engine.states[pos][-1]] if engine.storages[pos].master else []
                states.append(y + master)
                made.append(y[0] if to_eval else None)
                grads.append(engine.state(pos)["z"])
            order.extend(members)
            sw.add_params([engine.params[pos] for pos in members], group=index, states=states)
        sw.step(grads)
        kept = [None] * len(engine.params)
        for pos, y in zip(order, made):
            kept[pos] = y
    engine.kept = kept if to_eval else None
    engine.evaluating = to_eval
    return True


def _check_readable(engine, pos: int) -> None:
    st = engine.storages[pos]
    if st.mode == "kahan":
        raise ValueError(f"param {pos} keeps a Kahan compensation: train()/eval() would keep "
                         "y in the state dtype without it, and the way back would not be bit "
                         "for bit; use master_weights=True (or 'remainder') or "
                         "stochastic_rounding=True for schedule-free")
    z = kept_dtype(engine, pos)
    if z not in grad_dtypes(st.param, st.mode):
        fix = (f"{st.state} state keeps z in {z}, so keep a master (master_weights=True)"
               if st.quantized else f"keep the state in {st.param} (state_dtype) or keep a "
               "master (master_weights=True)")
        raise ValueError(f"param {pos} is {st.param} with {z} state: train()/eval() "
                         f"read z as the param's own dtype; {fix}")


def kept_dtype(engine, pos: int) -> str:
    """The dtype of ``pos``'s z and of its kept y: its state dtype, float32 beside
    quantized state (both slots are ``float_state``, fusedopt/algorithms/schedulefree.py)."""
    return engine.storages[pos].slot_dtype(None)


def saved_points(engine, to_host=None) -> dict:
    """What a checkpoint keeps of the points: the running scalars of each group
    (``running``), whether the params hold the evaluation point (``evaluating``) and, given
    ``to_host``, the kept y's by position (``kept``, host arrays). Empty for other
    optimizers."""
    saved: dict = {}
    if engine.spec.running is not None:
        saved["running"] = [None if group.running is None else dict(group.running)
                            for group in engine.hypers]
    if engine.spec.switch is not None:
        saved["evaluating"] = bool(engine.evaluating)
        if engine.kept is not None and to_host is not None:
            saved["kept"] = {i: to_host(y) for i, y in enumerate(engine.kept) if y is not None}
    return saved


def restore_points(engine, saved: dict, to_host) -> None:
    """Restore what :func:`saved_points` gave (a checkpoint without it: train mode, the
    running scalars at their start), into new arrays beside the params."""
    if engine.spec.running is not None and "running" in saved:
        for group, running in zip(engine.hypers, saved["running"]):
            group.running = None if running is None else {
                k: float(running[k]) for k in engine.spec.running}
    if engine.spec.switch is None:
        return
    engine.evaluating = bool(saved.get("evaluating", False))
    kept = saved.get("kept") or {}
    engine.kept = None
    if engine.evaluating and kept:
        engine.kept = [None] * len(engine.params)
        for i, p in enumerate(engine.params):
            y = kept.get(i, kept.get(str(i)))
            if y is None:
                continue
            y = np.asarray(to_host(y))
            if tuple(y.shape) != tuple(p.shape):
                raise ValueError(f"param {i}: the kept training point has shape "
                                 f"{tuple(y.shape)}, the param {tuple(p.shape)}")
            engine.kept[i] = kind_of(p).zeros(p, kept_dtype(engine, i))
            kind_of(p).copy_from_host(engine.kept[i], y)
