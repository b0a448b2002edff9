"""One call over many tensors gives the same bits as one call per tensor; launch counts."""

import numpy as np
import pytest
from cases import MATRIX_ONLY
from variants import make, matrix, matrix_ids

import fusedopt
from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cpu import backend as cpu
from fusedopt.backends.cpu import loop
from fusedopt.engine.step import scalar_row
from fusedopt.engine.reductions import tensor_rows
from fusedopt.memory.factored import slot_shape
from fusedopt.memory import table as _table

#: Empty tensors first, last and between; sizes off the vector width; one past a chunk.
SHAPES = [(0,), (1,), (3,), (4097,), (37, 53), (0,), (5,), (16,), (17,), (2, 3, 7), (130,),
          (1,), (0,)]
STEPS = 3
#: A chunk small enough that the list above needs many work items, most of them packed.
SMALL_CHUNK = 64


def problem(shapes, dtype=np.float32, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    params = [(rng.standard_normal(s) * 3).astype(dtype) for s in shapes]
    grads = [[(rng.standard_normal(s) * rng.choice([0.01, 1.0, 10.0])).astype(dtype)
              for s in shapes] for _ in range(steps)]
    return params, grads


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def step_together(name, hp, convention, params, grads, exclude=()):
    opt = make(name, hp, convention)
    opt.exclude_from_weight_decay(var_list=[params[i] for i in exclude])
    for step_grads in grads:
        opt.apply_gradients(zip(step_grads, params))
    return opt


def step_apart(name, hp, convention, params, grads, exclude=()):
    opts = []
    for i, p in enumerate(params):
        opts.append(make(name, dict(hp, weight_decay=0.0) if i in exclude and hp.get("weight_decay")
                         else hp, convention))
    for step_grads in grads:
        for opt, g, p in zip(opts, step_grads, params):
            opt.apply_gradients([(g, p)])
    return opts


@pytest.mark.parametrize("chunk", [SMALL_CHUNK, None], ids=["small-chunk", "default-chunk"])
@pytest.mark.parametrize("name,hp,convention", matrix(), ids=matrix_ids())
def test_multi_tensor_equals_per_tensor(name, hp, convention, chunk, monkeypatch):
    if chunk is not None:
        monkeypatch.setattr(config, "CPU_CHUNK", chunk)
    params, grads = problem(SHAPES)
    together = [p.copy() for p in params]
    apart = [p.copy() for p in params]
    opt = step_together(name, hp, convention, together, grads)
    opts = step_apart(name, hp, convention, apart, grads)
    for i, (a, b) in enumerate(zip(together, apart)):
        assert same_bits(a, b), f"param {i} {a.shape}"
        assert a.size == 0 or not np.array_equal(a, params[i]), f"param {i} did not move"
        for slot, s in opt.state(a).items():
            assert same_bits(s, opts[i].state(b)[slot]), f"param {i} slot {slot}"


@pytest.mark.parametrize("name,hp,convention", matrix(), ids=matrix_ids())
def test_excluded_params_get_no_weight_decay(name, hp, convention, monkeypatch):
    monkeypatch.setattr(config, "CPU_CHUNK", SMALL_CHUNK)
    params, grads = problem(SHAPES, seed=1)
    exclude = {1, 3, 4, 9}
    together = [p.copy() for p in params]
    apart = [p.copy() for p in params]
    step_together(name, hp, convention, together, grads, exclude)
    step_apart(name, hp, convention, apart, grads, exclude)
    for i, (a, b) in enumerate(zip(together, apart)):
        assert same_bits(a, b), f"param {i} {a.shape}"
    if hp.get("weight_decay"):
        decayed = [p.copy() for p in params]
        step_together(name, hp, convention, decayed, grads)
        assert not same_bits(decayed[3], together[3]), "the exclusion changed nothing"


def _rows(spec, flags, scalars, group, grads):
    """The step's scalars, or for an optimizer with per-tensor reductions its rows per
    tensor, from the backend's one reduction call over ``group``."""
    if spec.reductions is None:
        return scalars
    if spec.factored is not None:  # Adafactor: the factor phase moves the factors first
        cpu.factor(spec, flags, scalars, group, grads)
    sums = cpu.reduce(spec, flags, scalars, group, grads)
    return tensor_rows(spec, scalars, sums, group.sizes)


def _slots(spec, flags, p, init) -> list:
    """``p``'s state arrays, each in its declared shape (Adafactor's factors)."""
    return [np.full(slot_shape(kind, p.shape), init, p.dtype)
            for kind in spec.slot_shapes(flags)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_flag_one_call_equals_per_tensor_calls(name, dtype, monkeypatch):
    """Backend level, so that flags no hyperparameter of this optimizer selects are covered.
    float64 (8-byte elements in the same table walk) with the first flags only: the flags
    change the rule, not the walk, and each is a specialization of its own to compile."""
    monkeypatch.setattr(config, "CPU_CHUNK", SMALL_CHUNK)
    spec = REGISTRY[name]
    hp = dict(spec.defaults(), learning_rate=0.01)
    if "weight_decay" in hp:
        hp["weight_decay"] = 0.05
    for flags in spec.all_flags if dtype == "float32" else spec.all_flags[:1]:
        params, grads = problem(SHAPES, dtype=np.dtype(dtype), seed=2)
        init = spec.slot_init(hp)
        n = len(spec.slots(flags))
        together = [p.copy() for p in params]
        apart = [p.copy() for p in params]
        states_t = [_slots(spec, flags, p, init) for p in params]
        states_a = [_slots(spec, flags, p, init) for p in params]
        group = cpu.group(dtype, together, states_t)
        singles = [cpu.group(dtype, [p], [s]) for p, s in zip(apart, states_a)]
        for t, step_grads in enumerate(grads, start=1):
            scalars = scalar_row(spec, hp, t, "keras")  # the same for both paths: any will do
            cpu.step(spec, flags, _rows(spec, flags, scalars, group, step_grads), group,
                     step_grads)
            for single, g in zip(singles, step_grads):
                cpu.step(spec, flags, _rows(spec, flags, scalars, single, [g]), single, [g])
        for i in range(len(params)):
            assert same_bits(together[i], apart[i]), f"flags {flags} param {i}"
            for k in range(n):
                assert same_bits(states_t[i][k], states_a[i][k]), f"flags {flags} slot {k}"


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_packed_work_items_cover_every_element_once(chunk):
    """The CPU reading of a packed table: each task runs from its start to the next one's."""
    sizes = np.array([0, 1, 3, 70, 0, 5, 64, 65, 2, 2, 2, 0, 129, 1, 0], dtype=np.int64)
    items = _table.packed(_table.work_items(sizes, chunk), sizes, chunk)
    covered = [np.zeros(n, dtype=int) for n in sizes]
    starts = [(int(w) >> 32, (int(w) & 0xFFFFFFFF) * chunk) for w in items]
    for k, (t, begin) in enumerate(starts):
        t_stop, stop = starts[k + 1] if k + 1 < len(starts) else (len(sizes), 0)
        length = 0
        while t < t_stop or (t == t_stop and begin < stop):
            end = sizes[t] if t < t_stop else stop
            covered[t][begin:end] += 1
            length += max(0, end - begin)
            t, begin = t + 1, 0
        assert 0 < length <= chunk, f"task {k} covers {length} elements"
    for t, c in enumerate(covered):
        assert np.all(c == 1), f"tensor {t}: {c}"


def test_tiny_tensors_share_a_work_item_and_big_ones_split():
    tiny = [np.zeros(100, np.float32) for _ in range(200)]
    group = cpu.group("float32", tiny, [[] for _ in tiny])
    assert group.table.n_work == 1  # 20,000 elements: under one chunk
    big = [np.zeros(3 * config.CPU_CHUNK + 5, np.float32)]
    assert cpu.group("float32", big, [[]]).table.n_work == 4


def count_calls(monkeypatch) -> list:
    calls = []

    def counting(fn):
        def wrapper(*args):
            calls.append(fn.__name__)
            return fn(*args)
        return wrapper

    monkeypatch.setattr(cpu, "run", counting(loop.run))
    monkeypatch.setattr(cpu, "run_serial", counting(loop.run_serial))
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 0)  # several work items: the pool
    return calls


def model(n_tensors=200, dtypes=(np.float32, np.float64), seed=3):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 300, n_tensors)
    return [rng.standard_normal(int(s)).astype(dtypes[i % len(dtypes)])
            for i, s in enumerate(sizes)]


#: Muon (3 calls, 2-D) and factored moments (Adafactor: one Numba call per tensor and pass,
#: fusedopt/backends/cpu/factored.py, not one per group yet) left out.
ONE_CALL = sorted(n for n in set(REGISTRY) - MATRIX_ONLY if REGISTRY[n].factored is None)


@pytest.mark.parametrize("name", ONE_CALL)
def test_one_cpu_call_per_dtype_group(name, monkeypatch):
    monkeypatch.setattr(config, "CPU_CHUNK", 1024)  # several work items per group
    params = model()
    opt = make(name, {}, "keras")
    calls = count_calls(monkeypatch)
    for step in range(2):
        del calls[:]
        opt.apply_gradients([(np.ones_like(p), p) for p in params])
        assert calls == ["run", "run"], f"step {step}: {calls}"


def test_weight_decay_exclusions_add_one_call_per_dtype(monkeypatch):
    params = model()
    opt = fusedopt.AdamW(weight_decay=0.1)
    opt.exclude_from_weight_decay(var_list=params[::3])
    calls = count_calls(monkeypatch)
    opt.apply_gradients([(np.ones_like(p), p) for p in params])
    assert len(calls) == 4
    plain = fusedopt.Adam()  # no weight decay: exclusions change nothing, no extra call
    plain.exclude_from_weight_decay(var_list=params[::3])
    del calls[:]
    plain.apply_gradients([(np.ones_like(p), p) for p in params])
    assert len(calls) == 2


def test_exclusions_are_set_before_the_first_step():
    p = np.ones(3, np.float32)
    opt = fusedopt.AdamW()
    opt.apply_gradients([(np.ones(3, np.float32), p)])
    with pytest.raises(ValueError, match="before the first step"):
        opt.exclude_from_weight_decay(var_list=[p])
    with pytest.raises(TypeError, match="var_names must be strings"):
        fusedopt.AdamW().exclude_from_weight_decay(var_names=[3])


def test_grads_are_still_checked_every_step():
    p = np.ones(8, np.float32)
    opt = fusedopt.Adam()
    opt.apply_gradients([(np.ones(8, np.float32), p)])
    with pytest.raises(ValueError, match="shapes differ"):
        opt.apply_gradients([(np.ones(9, np.float32), p)])
    with pytest.raises(TypeError, match="grad dtype float64"):
        opt.apply_gradients([(np.ones(8), p)])
    before = p.copy()
    strided = np.ones(16, np.float32)[::2]  # not contiguous: copied, still applied
    opt.apply_gradients([(strided, p)])
    assert not np.array_equal(p, before)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.apply_gradients([(np.ones(8, np.float32), p)])


def test_launch_table_is_written_only_when_a_grad_moves():
    p = np.ones(10, np.float32)
    g = np.ones(10, np.float32)
    opt = fusedopt.Adam()
    opt.apply_gradients([(g, p)])
    (launch,) = opt._engine.launch_groups((0,))
    group = launch.group
    version = group.table.version
    opt.apply_gradients([(g, p)])
    assert group.table.version == version
    opt.apply_gradients([(g.copy(), p)])
    assert group.table.version == version + 1


def test_one_launch_per_dtype_group(request):
    """CUDA backend, run on the host: 200 tensors of two dtypes are two launches a step."""
    try:
        runtime = request.getfixturevalue("host_cuda")
    except pytest.FixtureLookupError:
        pytest.skip("needs the host_cuda fixture (the host runtime for the CUDA kernels)")
    params = model()
    reference = [p.copy() for p in params]
    opt = fusedopt.Adam(learning_rate=0.01, backend="cuda")
    on_cpu = fusedopt.Adam(learning_rate=0.01, backend="cpu")
    for step in range(2):
        before = len(runtime.launches)
        opt.apply_gradients([(np.full_like(p, 0.5), p) for p in params])
        assert len(runtime.launches) - before == 2, f"step {step}"
        on_cpu.apply_gradients([(np.full_like(p, 0.5), p) for p in reference])
    for p, r in zip(params, reference):
        np.testing.assert_allclose(p, r, rtol=1e-6, atol=1e-6)


def test_benchmark_script_runs_at_tiny_sizes(capsys, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "bench_multitensor.py"
    spec = importlib.util.spec_from_file_location("bench_multitensor", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    assert bench.main(["--scale", "0.0002", "--vectors", "5", "--matrices", "2", "--small",
                       "10", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for name in (bench.LIST, bench.FLAT, bench.ARENA):
        assert f"| {name} |" in out
    assert "7 tensors" in out
