"""fusedopt.FlatParams: one buffer per dtype, stepped in one call, equal to the list step."""

import numpy as np
import pytest
from test_multitensor import SHAPES, count_calls, problem, same_bits
from variants import make, matrix, matrix_ids

import fusedopt
from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY

NAMES = [f"layer{i}/{'bias' if i % 3 == 1 else 'kernel'}" for i in range(len(SHAPES))]


def layout(dtype=np.float32):
    return {n: (s, dtype) for n, s in zip(NAMES, SHAPES)}


def train_arena(name, hp, convention, params, grads, no_decay=(), hint=True):
    arena = fusedopt.FlatParams(layout(), no_decay=no_decay if hint else ())
    arena.adopt(dict(zip(NAMES, params)))
    opt = make(name, hp, convention)
    if no_decay:
        opt.exclude_from_weight_decay(var_names=list(no_decay))
    for step_grads in grads:
        for n, g in zip(NAMES, step_grads):
            arena.grads[n][...] = g
        opt.apply_gradients(arena)
    return arena, opt


def train_list(name, hp, convention, params, grads, excluded=()):
    params = [p.copy() for p in params]
    opt = make(name, hp, convention)
    opt.exclude_from_weight_decay(var_list=[params[i] for i in excluded])
    for step_grads in grads:
        opt.apply_gradients(zip(step_grads, params))
    return params, opt


#: Elementwise optimizers: those with per-tensor norms refuse an arena (test below).
ELEMENTWISE = [(case, i) for case, i in zip(matrix(), matrix_ids())
               if REGISTRY[case[0]].reductions is None]


@pytest.mark.parametrize("exclude", ["none", "hinted", "unhinted"])
@pytest.mark.parametrize("name,hp,convention", [c for c, _ in ELEMENTWISE],
                         ids=[i for _, i in ELEMENTWISE])
def test_arena_step_equals_list_step(name, hp, convention, exclude, monkeypatch):
    monkeypatch.setattr(config, "CPU_CHUNK", 64)
    params, grads = problem(SHAPES, seed=4)
    no_decay = () if exclude == "none" else ("bias",)
    excluded = [i for i, n in enumerate(NAMES) if "bias" in n] if no_decay else []
    arena, opt = train_arena(name, hp, convention, params, grads, no_decay,
                             hint=exclude == "hinted")
    listed, list_opt = train_list(name, hp, convention, params, grads, excluded)
    states = arena.state(opt)
    for i, n in enumerate(NAMES):
        assert same_bits(arena.params[n], listed[i]), n
        assert listed[i].size == 0 or not np.array_equal(listed[i], params[i]), n
        for slot, s in list_opt.state(listed[i]).items():
            assert same_bits(states[n][slot], s), f"{n} {slot}"


def test_a_step_is_one_table_entry_per_dtype(monkeypatch):
    shapes = {f"w{i}": ((i % 7 + 1, 5), np.float32 if i % 2 else np.float64)
              for i in range(200)}
    arena = fusedopt.FlatParams(shapes)
    assert set(arena.buffers) == {"float32", "float64"}
    opt = fusedopt.Adam()
    calls = count_calls(monkeypatch)
    arena.step(opt)
    assert len(calls) == 2
    groups = [launch.group for launch in opt._engine.launch_groups((0, 1))]
    assert [g.table.n_tensors for g in groups] == [1, 1]


def test_hinted_exclusions_keep_two_segments_per_dtype():
    arena = fusedopt.FlatParams({"a/kernel": 5, "a/bias": 2, "b/kernel": 7, "b/bias": 3},
                                no_decay=["bias"])
    opt = fusedopt.AdamW()
    opt.exclude_from_weight_decay(var_names=["bias"])
    arena.step(opt)
    assert len(opt._params) == 2 and opt._engine.decays == [True, False]
    unhinted = fusedopt.FlatParams({"a/kernel": 5, "a/bias": 2, "b/kernel": 7, "b/bias": 3})
    opt = fusedopt.AdamW()
    opt.exclude_from_weight_decay(var_names=["bias"])
    unhinted.step(opt)
    assert opt._engine.decays == [True, False, True, False]


def test_views_share_the_buffers_and_are_aligned():
    arena = fusedopt.FlatParams([(3, 5), 7, ((2, 2), np.float64), 0, 1])
    assert [v.shape for v in arena.params] == [(3, 5), (7,), (2, 2), (0,), (1,)]
    assert [v.dtype for v in arena.grads] == [np.float32] * 2 + [np.float64] + [np.float32] * 2
    for v in arena.params:
        assert np.shares_memory(v, arena.buffers[v.dtype.name]) or v.size == 0
        assert v.__array_interface__["data"][0] % config.FLAT_ALIGN_BYTES == 0
    arena.grads[1][...] = 2.0
    assert arena.grad_buffers["float32"].sum() == 14.0
    arena.zero_grad()
    assert arena.grad_buffers["float32"].sum() == 0.0


def test_adopt_copies_and_checks():
    w = np.arange(6, dtype=np.float64).reshape(2, 3)
    arena = fusedopt.FlatParams.from_arrays({"w": w.astype(np.float32), "b": np.ones(3)})
    np.testing.assert_array_equal(arena.params["w"], w)
    assert arena.params["b"].dtype == np.float64
    arena.params["w"][0, 0] = 9.0
    assert w[0, 0] == 0.0  # a copy, not the caller's array
    with pytest.raises(ValueError, match=r"param 'w': shape \(3, 2\) differs"):
        arena.adopt({"w": np.zeros((3, 2)), "b": np.ones(3)})
    with pytest.raises(ValueError, match="got 1 arrays"):
        fusedopt.FlatParams([3, 4]).adopt([np.zeros(3)])
    with pytest.raises(ValueError, match="no_decay names need a dict layout"):
        fusedopt.FlatParams([3, 4], no_decay=["bias"])


def test_state_dict_round_trips(monkeypatch):
    monkeypatch.setattr(config, "CPU_CHUNK", 64)
    params, grads = problem(SHAPES, seed=5, steps=6)
    arena, opt = train_arena("adamw", {"weight_decay": 0.1}, "keras", params, grads[:3],
                             no_decay=("bias",))
    saved = opt.state_dict()
    resumed = fusedopt.FlatParams(layout(), no_decay=("bias",))
    resumed.adopt({n: v.copy() for n, v in arena.params.items()})
    opt2 = fusedopt.AdamW(weight_decay=0.1)
    opt2.exclude_from_weight_decay(var_names=["bias"])
    opt2.load_state_dict(saved)
    for step_grads in grads[3:]:
        for a, o in ((arena, opt), (resumed, opt2)):
            for n, g in zip(NAMES, step_grads):
                a.grads[n][...] = g
            a.step(o)
    assert opt.iterations == opt2.iterations == 6
    for n in NAMES:
        assert same_bits(arena.params[n], resumed.params[n]), n


def test_an_optimizer_belongs_to_one_arena():
    arena = fusedopt.FlatParams([4])
    opt = fusedopt.Adam()
    opt.apply_gradients([(np.ones(4, np.float32), np.ones(4, np.float32))])
    with pytest.raises(ValueError, match="built for other params"):
        arena.step(opt)
    with pytest.raises(ValueError, match="has not stepped this arena"):
        arena.state(fusedopt.Adam())


def test_exclusion_by_view_equals_exclusion_by_name():
    params, grads = problem(SHAPES, seed=6)
    by_name, _ = train_arena("adamw", {"weight_decay": 0.2}, "keras", params, grads,
                             no_decay=("bias",))
    arena = fusedopt.FlatParams(layout(), no_decay=("bias",))
    arena.adopt(dict(zip(NAMES, params)))
    opt = fusedopt.AdamW(weight_decay=0.2)
    opt.exclude_from_weight_decay(var_list=[v for n, v in arena.params.items() if "bias" in n])
    for step_grads in grads:
        for n, g in zip(NAMES, step_grads):
            arena.grads[n][...] = g
        arena.step(opt)
    assert opt._engine.decays == [True, False]
    for n in NAMES:
        assert same_bits(arena.params[n], by_name.params[n]), n


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if REGISTRY[n].reductions))
def test_per_tensor_norms_refuse_an_arena_and_change_nothing(name):
    """An arena is stepped as one tensor per dtype, so LAMB's ratio would be the whole
    buffer's: refused, naming the fix, before anything is made or moved."""
    arena = fusedopt.FlatParams({"w": (3, 4), "b": (4,)})
    arena.params["w"][...] = 1.0
    arena.grads["w"][...] = 0.5
    opt = {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}[name]()
    with pytest.raises(ValueError, match="pass its tensors as"):
        opt.apply_gradients(arena)
    assert (arena.params["w"] == 1.0).all() and opt.iterations == 0
    opt.apply_gradients(zip(arena.grads.values(), arena.params.values()))
    assert (arena.params["w"] != 1.0).all() and opt.iterations == 1
