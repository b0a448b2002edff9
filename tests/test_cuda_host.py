"""The CUDA backend - launch code and kernels - run on the CPU, against the CPU backend and the
float64 reference (kernels/README.md, "How the CUDA path is verified without a GPU").

``host_cuda`` (tests/conftest.py) installs tests/cuda_host's runtime: the kernels of
kernels/*.cu built with g++, launched block by block and thread by thread, each launch
checked as CuPy and a GPU would check it. Everything is driven by the registry.
"""

import numpy as np
import pytest
from cuda_host import HostRuntime, build, compare, cupy_type

from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import launch

STEPS = 10
#: Factored moments (Adafactor), whose state is not of the params' shapes, have their own
#: runs: tests/test_cuda_adafactor.py.
SPECS = [spec for spec in REGISTRY.values() if spec.on_cuda and spec.factored is None]

#: (spec, dtype, variant) for every registered optimizer, dtype and on/off combination.
VARIANTS = [(spec, dtype, v) for spec in SPECS for dtype in compare.BASE_DTYPES
            for v in compare.variants(spec)]

#: Tail and block paths without the big tensor (which test_awkward_sizes runs).
SMALL_SHAPES = tuple(s for s in compare.SHAPES if np.prod(s) < 10**5)

#: (chunk, threads per block): one thread, idle threads (threads x vector > chunk), several
#: strides per chunk, and the largest block CUDA allows.
LAUNCH_SHAPES = [(8, 1), (64, 32), (1024, 64), (65536, 1024)]


#: The first float32 variant that reaches each entry point: it is also held to the CPU
#: backend (in ulps, params and state). The CPU backend compiles a Numba specialization per
#: variant and dtype, seconds each; other variants, and float64 (whose 1e-14 reference
#: tolerance is a few dozen ulps), are held to the reference only.
FIRST_FOR_ENTRY = {}
for _spec, _dtype, _variant in VARIANTS:
    if _dtype == "float32":
        FIRST_FOR_ENTRY.setdefault(compare.entry_of(_spec, _variant, _dtype), (_spec, _variant))


def _run_and_compare(spec, variant, dtype, problem, what, with_cpu=True):
    actual, actual_states = compare.run_backend(spec, variant, problem, dtype, "cuda")
    expected = compare.run_reference(spec, variant, problem, dtype)
    cpu, cpu_states = None, None
    if with_cpu:
        cpu, cpu_states = compare.run_backend(spec, variant, problem, dtype, "cpu")
    compare.assert_close(what, actual, cpu, expected, dtype, cpu_states, actual_states)
    return actual


def _with_misaligned(shapes):
    """``shapes`` plus a misaligned param (forces the scalar path) after them."""
    return (*shapes, (compare.MISALIGNED_SIZE,)), (len(shapes),)


def test_every_entry_point_runs_on_the_host():
    """The variants below reach every default-storage optimizer entry point of float32 and
    float64 params (tests/test_storage_cuda_host.py reaches those of every other storage)."""
    reached = {compare.entry_of(spec, v, dtype) for spec, dtype, v in VARIANTS}
    wanted = {name for spec in SPECS for st, _, name in spec.entries()
              if st.param in compare.BASE_DTYPES and st.state == st.param}
    assert wanted <= reached, f"no host run for {sorted(wanted - reached)}"


@pytest.mark.parametrize("spec, dtype, variant", VARIANTS,
                         ids=[f"{s.name}-{d}-{v.id()}" for s, d, v in VARIANTS])
def test_variant_matches_cpu_and_reference(host_cuda, monkeypatch, spec, dtype, variant):
    """Every variant over tails, an empty tensor, 2-D and a misaligned view, several blocks."""
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 64)
    shapes, misaligned = _with_misaligned(SMALL_SHAPES)
    problem = compare.make_problem(shapes, STEPS, seed=1, misaligned=misaligned)
    first = FIRST_FOR_ENTRY.get(compare.entry_of(spec, variant, dtype)) == (spec, variant)
    _run_and_compare(spec, variant, dtype, problem, f"{spec.name} {dtype} {variant.id()}",
                     with_cpu=first)
    # One launch per step for all tensors (and the reduction phase's two before it)
    per_step = compare.step_launches(spec, variant, dtype)
    assert [name for name, _, _ in host_cuda.launches] == per_step * STEPS


@pytest.mark.parametrize("spec, dtype", [(s, d) for s in SPECS for d in compare.BASE_DTYPES],
                         ids=[f"{s.name}-{d}" for s in SPECS for d in compare.BASE_DTYPES])
def test_awkward_sizes(host_cuda, spec, dtype):
    """1, 3, 4097, 278011, empty, 2-D and a misaligned view, default launch sizes."""
    shapes, misaligned = _with_misaligned(compare.SHAPES)
    problem = compare.make_problem(shapes, STEPS, seed=2, misaligned=misaligned)
    variant = compare.variants(spec)[0]
    _run_and_compare(spec, variant, dtype, problem, f"{spec.name} {dtype}",
                     with_cpu=dtype == "float32")
    n_blocks = sum(-(-int(np.prod(s)) // config.CUDA_CHUNK) for s in shapes)
    block = (config.THREADS_PER_BLOCK, 1, 1)
    combine = (-(-len(shapes) * max(1, len(spec.reductions.names) if spec.reductions else 1)
                // config.THREADS_PER_BLOCK), 1, 1)
    per_step = [(name, combine if name == "combine_sums" else (n_blocks, 1, 1), block)
                for name in compare.step_launches(spec, variant, dtype)]
    assert host_cuda.launches == per_step * STEPS


@pytest.mark.parametrize("shape", [*compare.SHAPES, "misaligned"], ids=str)
def test_each_size_alone(host_cuda, shape):
    """One tensor per call: the table for a single tensor, for each awkward size."""
    spec = SPECS[0]
    shapes, misaligned = ((compare.MISALIGNED_SIZE,),), (0,)
    if shape != "misaligned":
        shapes, misaligned = (shape,), ()
    problem = compare.make_problem(shapes, STEPS, seed=3, misaligned=misaligned)
    _run_and_compare(spec, compare.variants(spec)[0], "float32", problem, f"shape {shape}")
    assert len(host_cuda.launches) == (STEPS if np.prod(shapes[0]) else 0)


FAMILY_SPECS = list({spec.kernel: spec for spec in reversed(SPECS)}.values())


@pytest.mark.parametrize("chunk, threads", LAUNCH_SHAPES, ids=[f"chunk{c}-threads{t}"
                                                               for c, t in LAUNCH_SHAPES])
@pytest.mark.parametrize("spec", FAMILY_SPECS, ids=[s.kernel for s in FAMILY_SPECS])
def test_launch_shapes(host_cuda, monkeypatch, spec, chunk, threads):
    """The same answers whatever the chunk and block size (multi-block and tail paths)."""
    monkeypatch.setattr(config, "CUDA_CHUNK", chunk)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", threads)
    shapes, misaligned = _with_misaligned(((3,), (4097,), (37, 129)))
    problem = compare.make_problem(shapes, 3, seed=4, misaligned=misaligned)
    for dtype in compare.BASE_DTYPES:
        _run_and_compare(spec, compare.variants(spec)[-1], dtype, problem,
                         f"chunk {chunk}, {threads} threads, {dtype}",
                         with_cpu=dtype == "float32")
    assert all(block == (threads, 1, 1) for _, _, block in host_cuda.launches)


def test_thread_order_does_not_matter(cuda_cache_dir, monkeypatch):
    """Blocks and threads run last-to-first give the same bits: no thread reads another's work."""
    from fusedopt.backends.cuda import runtime
    monkeypatch.setattr(config, "CUDA_CHUNK", 64)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 8)
    results = []
    for order in ("forward", "reverse"):
        host = HostRuntime(cuda_cache_dir / "host", order=order)
        previous = runtime.install(host)
        try:
            for spec in FAMILY_SPECS:
                problem = compare.make_problem(((4097,), (5,)), 3, seed=5)
                results += compare.run_backend(spec, compare.variants(spec)[-1], problem,
                                               "float32", "cuda")[0]
        finally:
            runtime.install(previous)
    half = len(results) // 2
    for forward, reverse in zip(results[:half], results[half:]):
        np.testing.assert_array_equal(forward, reverse)


def test_many_tensors_mixed_dtypes_one_launch_per_dtype(host_cuda):
    """Ten tensors of mixed sizes and two dtypes in one call: one launch per dtype, per step."""
    spec = SPECS[0]
    variant = compare.variants(spec)[0]
    rng = np.random.default_rng(6)
    sizes = [1, 7, 64, 1000, 4097, 3, 0, 12345, 2, 300]
    dtypes = ["float32" if i % 3 else "float64" for i in range(len(sizes))]
    params = [rng.standard_normal(n).astype(d) for n, d in zip(sizes, dtypes)]
    start = [p.copy() for p in params]
    hp = compare.full_hyper(spec, variant)
    slots = spec.slots(spec.flags(hp, variant.convention))
    states = [[np.zeros_like(p) for _ in slots] for p in params]
    from fusedopt import functional
    for step in range(1, 4):
        grads = [rng.standard_normal(n).astype(d) for n, d in zip(sizes, dtypes)]
        functional.update(spec.name, params, grads, states, step=step, backend="cuda",
                          convention=variant.convention, **variant.hp)
    assert len(host_cuda.launches) == 3 * len(set(dtypes))
    assert all(not np.array_equal(p, s) for p, s in zip(params, start) if p.size)


def _optimizer_classes():
    import fusedopt
    return sorted((c for c in fusedopt.Optimizer.__subclasses__()
                   if REGISTRY[c.spec_name].on_cuda), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _optimizer_classes(), ids=lambda c: c.__name__)
def test_optimizer_class_uploads_its_table_once(host_cuda, cls):
    """Keras-style API: the launch table goes to the device once while nothing moves."""
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(s).astype(np.float32) for s in ((5,), (4097,), (3, 7))]
    twins = [p.copy() for p in params]
    grads = [np.zeros_like(p) for p in params]
    fused, cpu = cls(backend="cuda"), cls(backend="cpu")
    for _ in range(STEPS):
        for g in grads:
            g[...] = rng.standard_normal(g.shape)  # same buffers: the table stays valid
        fused.apply_gradients(zip(grads, params))
        cpu.apply_gradients(zip(grads, twins))
    table = fused._engine.launch_groups()[0].group.device_table
    spec = REGISTRY[cls.spec_name]
    # The reduction and its combine; a factored moment's factor phase (two) before them.
    per_step = (3 if spec.reductions is not None else 1) + (2 if spec.factored else 0)
    assert len(host_cuda.launches) == per_step * STEPS and host_cuda.uploaded[id(table)] == 1
    for p, q in zip(params, twins):
        assert int(compare.ulp_distance(p, q).max()) <= compare.TOLERANCE["float32"]["ulps"]


# --- what the host runtime refuses ----------------------------------------------------------

def _float32_kernel(host):
    spec = next(s for s in SPECS if "float32" in s.dtypes)
    name = spec.entry("float32", spec.all_flags[0])
    return spec, name, host.module(spec.kernel, launch.name_expressions(spec.kernel)).get_function(name)


def test_cupy_conversion_rules():
    assert cupy_type(1.0) == "float64" and cupy_type(1) == "int64" and cupy_type(True) == "bool"
    assert cupy_type(np.float32(1)) == "float32" and cupy_type(np.int32(1)) == "int32"
    assert cupy_type(np.zeros(3, np.int64)) == "*int64"


def test_scalar_rows_of_the_wrong_type_are_rejected(host_cuda, monkeypatch):
    """A backend that forgets to round the scalar rows to the compute type: the kernel would
    read float64 bits as float32 values."""
    from fusedopt.memory.steps import StepRows
    spec, name, _ = _float32_kernel(host_cuda)
    monkeypatch.setattr(StepRows, "row_array", lambda self, dtype: np.asarray(
        self.rows, np.float64).ravel())
    problem = compare.make_problem(((5,),), 1, seed=8)
    with pytest.raises(TypeError, match=r"argument 3 is a ndarray, which CuPy passes as "
                                        r"\*float64, but the kernel's parameter is \*float32"):
        compare.run_backend(spec, compare.variants(spec)[0], problem, "float32", "cuda")
    assert not host_cuda.launches


def test_python_int_for_an_int_parameter_is_rejected(host_cuda, monkeypatch):
    spec, _, _ = _float32_kernel(host_cuda)
    monkeypatch.setattr(launch, "_INDEX_TYPES", (int, int))  # n_tensors is a C int
    problem = compare.make_problem(((5,),), 1, seed=8)
    with pytest.raises(TypeError, match="argument 1 is a int, which CuPy passes as int64"):
        compare.run_backend(spec, compare.variants(spec)[0], problem, "float32", "cuda")


def test_chunk_off_the_vector_width_is_rejected(host_cuda, monkeypatch):
    """A chunk that is not a multiple of 16 bytes would start a vector loop misaligned."""
    spec, _, _ = _float32_kernel(host_cuda)
    monkeypatch.setattr(config, "CUDA_CHUNK", 1001)
    problem = compare.make_problem(((4097,),), 1, seed=9)
    with pytest.raises(ValueError, match="not a multiple of the 16-byte vector width"):
        compare.run_backend(spec, compare.variants(spec)[0], problem, "float32", "cuda")


def test_table_pointing_outside_its_arrays_is_rejected(host_cuda):
    _, name, kernel = _float32_kernel(host_cuda)
    n_slots = 2
    p = np.zeros(8, np.float32)
    arrays = [p, np.zeros(8, np.float32)] + [np.zeros(8, np.float32) for _ in range(n_slots)]
    addresses = [host_cuda.address(a) for a in arrays]
    addresses[0] += 4 * 4  # param pointer moved past half the array: 8 elements overrun
    table = np.array([*addresses, 8, *_extra_rows(n_slots), 0], np.int64)
    device_table = host_cuda.to_device(table)
    from fusedopt.memory.steps import step_rows
    rows = step_rows(lambda t: (0.1,) * 10, [1], [0])
    args = [device_table, np.int32(1), np.int64(8),
            host_cuda.to_device(rows.row_array(np.float32)), host_cuda.to_device(rows.control()),
            host_cuda.zeros(np.zeros(1, np.int32))]
    with pytest.raises(ValueError, match="not inside any array"):
        kernel((1,), (4,), args)


def _extra_rows(n_slots):
    """Per-tensor rows between sizes and work items in this branch's table layout, if any."""
    from fusedopt.memory import table as _table
    if not hasattr(_table, "rows"):
        return []
    rows = _table.rows(n_slots, 1)
    return [0] * (rows["work"] - rows["sizes"] - 1)


def test_empty_launch_is_rejected(host_cuda):
    _, _, kernel = _float32_kernel(host_cuda)
    with pytest.raises(ValueError, match="empty launch"):
        kernel((0,), (256,), [])


def test_cooperating_threads_do_not_build_on_the_host(cuda_cache_dir):
    code = ("template <typename T>\n"
            "__global__ void probe(T* x) { x[threadIdx.x] += 1; __syncthreads(); }\n")
    with pytest.raises(build.BuildError, match="__syncthreads makes threads cooperate"):
        build.build("probe", code, ["probe<float>"], cuda_cache_dir / "host")


def test_a_wrong_kernel_fails_the_comparison(cuda_cache_dir):
    """The comparison can fail: a kernel whose tail never stores the param is caught."""
    from cuda_host import probes

    from fusedopt.backends.cuda import runtime, source
    family, name = probes.float32_entry()
    spec = next(s for s in SPECS if s.kernel == family)
    host = HostRuntime(cuda_cache_dir / "host", only=name,
                       sources={family: probes.drop_tail_store(source.source(family))})
    previous = runtime.install(host)
    try:
        variant = next(v for v in compare.variants(spec)
                       if compare.entry_of(spec, v, "float32") == name)
        problem = compare.make_problem(((3,),), 2, seed=12)
        with pytest.raises(AssertionError, match="relative error"):
            _run_and_compare(spec, variant, "float32", problem, "broken tail", with_cpu=False)
    finally:
        runtime.install(previous)


def test_helper_kernels_may_cooperate(cuda_cache_dir):
    """Kernels that are no optimizer's (reductions) run with real barriers and shared memory."""
    from cuda_host import probes
    code, name = probes.block_sums_kernel()
    host = HostRuntime(cuda_cache_dir / "host", sources={"probe": code})
    kernel = host.module("probe", [name]).get_function(name)
    x = np.arange(1000, dtype=np.float32)
    out = np.zeros(3, np.float64)
    kernel((3,), (64,), (x, np.int64(x.size), out))
    stride = 3 * 64
    expected = [sum(float(x[i]) for i in range(b * 64, 1000) if (i % stride) // 64 == b)
                for b in range(3)]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_threads_that_pass_different_barriers_are_an_error(cuda_cache_dir, order):
    """A __syncthreads that only some threads of a block reach ends the launch in an error
    naming the threads and their barrier counts, not a hang or a silent success."""
    from cuda_host import probes
    code, name = probes.divergent_barrier_kernel()
    host = HostRuntime(cuda_cache_dir / "host", sources={"probe": code}, order=order)
    kernel = host.module("probe", [name]).get_function(name)
    with pytest.raises(RuntimeError, match=r"thread \(0, 0, 0\) passed 2 barriers but thread "
                                           r"\(1, 0, 0\) passed 1; every thread of a block"):
        kernel((2,), (64,), (np.zeros(64, np.float32),))


def test_a_shuffle_the_host_cannot_run_is_an_error(cuda_cache_dir):
    """A check that fails inside a cooperative thread ends the launch with its message."""
    from cuda_host import probes
    code, name = probes.half_warp_shuffle_kernel()
    host = HostRuntime(cuda_cache_dir / "host", sources={"probe": code})
    kernel = host.module("probe", [name]).get_function(name)
    x = np.arange(64, dtype=np.float32)
    with pytest.raises(RuntimeError, match="full-mask shuffles of whole warps"):
        kernel((1,), (64,), (x,))
