"""The CUDA backend's launch code with clipping, on a stand-in runtime (no GPU here).

The stand-in keeps "device" arrays as separate NumPy copies and runs each kernel's math
with the CPU code over the very launch table the kernel would get (the layout is shared),
so what is checked is launch.py: argument order, the table rows it writes on the device,
the grad pre-pass's launches and their combine, and resetting the scales when a step stops
clipping. The kernels' own arithmetic is covered by the compile gates and a GPU run.
"""

import re

import numpy as np
import pytest

from fusedopt import functional
from fusedopt.algorithms.gradsums import GRAD_SUMS
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cpu import backend as cpu_backend
from fusedopt.backends.cpu import reduce as cpu_reduce
from fusedopt.backends.cpu import storage as cpu_storage
from fusedopt.backends.cpu.loop import run as cpu_run
from fusedopt.backends.cuda import launch, runtime
from fusedopt.engine.step import scalar_row
from fusedopt.memory.group import NO_CLIP, GradClip
from fusedopt.memory.steps import step_rows
from fusedopt.memory.storage import MODE_IDS, Storage
from fusedopt.memory.table import rows

MODES = {v: k for k, v in MODE_IDS.items()}  # the kernels' MODE -> mode name

_ENTRY = re.compile(r"(\w+)<(.*)>")
_DTYPES = {"float": "float32", "double": "float64"}


class _Module:
    def __init__(self, family):
        self.family = family

    def get_function(self, name):
        kernel, targs = _ENTRY.fullmatch(name).groups() if "<" in name else (name, "")
        targs = [a.strip() for a in targs.split(",") if a.strip()]
        if kernel == GRAD_SUMS.reduce_kernel:
            def launch_(grid, block, args):
                # The block sums are the CPU's chunk sums over the same table: the same
                # totals, in another order.
                table, n_tensors, chunk, partial = args
                n_slots = int(targs[1])
                items = table[rows(n_slots, int(n_tensors))["work"]:]  # one per chunk
                code = cpu_storage.CODES[_DTYPES[targs[0]]]
                sums = cpu_reduce.stored_partial(GRAD_SUMS, (), code, table, items,
                                                 int(n_tensors), n_slots, int(chunk))
                assert grid == (items.size,) and partial.size == 2 * items.size
                partial[:] = sums.reshape(-1)
        elif kernel == "combine_sums":
            def launch_(grid, block, args):
                work, n_work, n_tensors, n_terms, partial, sums = args
                n, terms = int(n_tensors), int(n_terms)
                assert grid[0] * block[0] >= n * terms and work.size == int(n_work)
                blocks = partial[: terms * int(n_work)].reshape(terms, -1)
                for t in range(n):
                    lo, hi = np.searchsorted(work, [t << 32, (t + 1) << 32])
                    sums[t: terms * n: n] = blocks[:, lo:hi].sum(axis=1)
        else:
            spec = next(s for s in REGISTRY.values() if s.kernel == kernel)
            flags = tuple(int(f) for f in targs[4:])
            storage = Storage(*(_DTYPES[t] for t in targs[:3]), MODES[int(targs[3])])

            def launch_(grid, block, args):
                table, n_tensors, chunk, scalar_rows, control, _ = args
                lo, _, n_scalars, window = (int(v) for v in control[:4])
                assert window == 0  # nothing in doubt in these tests
                r = int(control[7]) - lo
                n_slots = len(spec.slots(flags))
                assert grid == (table.size - rows(n_slots, int(n_tensors))["work"],)
                variant = cpu_backend.variant(spec, flags, storage)
                cpu_run(variant, table, int(n_tensors), int(chunk),
                        tuple(float(x) for x in scalar_rows[r * n_scalars:(r + 1) * n_scalars]),
                        np.int64(control[7]))
        return launch_


class EmulatedRuntime:
    name = "emulated"

    def accepts(self, array):
        return isinstance(array, np.ndarray)

    def address(self, array):
        return array.__array_interface__["data"][0]

    def zeros(self, like, fill=0.0):
        return np.full(like.shape, fill, dtype=like.dtype)

    def set_flag(self, flags, slot, value):
        flags[slot] = np.int32(np.asarray(value).reshape(()) != 0)

    def read_later(self, array):
        from fusedopt.backends.cuda.runtime import Pending
        value = np.array(array).reshape(-1)[0]
        return Pending(lambda: True, lambda: value)

    def to_device(self, host_array, out=None):
        if out is not None and out.shape == host_array.shape:  # into ``out``, as CuPy's
            out[...] = host_array
            return out
        return host_array.copy()  # a separate copy, as device memory is

    def module(self, family, name_expressions):
        return _Module(family)


@pytest.fixture
def emulated():
    previous = runtime.install(EmulatedRuntime())
    yield
    runtime.install(previous)


def _problem(seed):
    rng = np.random.default_rng(seed)
    shapes = [(300,), (0,), (3, 7), (1,), (4099,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[(rng.standard_normal(s) * 5).astype(np.float32) for s in shapes]
             for _ in range(4)]
    return params, grads


@pytest.mark.parametrize("clip", [dict(clipnorm=1.0), dict(global_clipnorm=2.0),
                                  dict(clipvalue=0.5), {}], ids=str)
@pytest.mark.parametrize("name", ["adam", "nadam", "lion"])
def test_cuda_launch_equals_cpu(name, clip, emulated, monkeypatch):
    monkeypatch.setattr("fusedopt.config.CUDA_CHUNK", 512)
    monkeypatch.setattr("fusedopt.config.CPU_CHUNK", 512)
    spec = REGISTRY[name]
    results = {}
    for backend in ("cpu", "cuda"):
        params, grads = _problem(1)
        states = [[np.zeros_like(p) for _ in spec.slots(spec.flags(spec.defaults(), "keras"))]
                  for p in params]
        for t, gs in enumerate(grads, start=1):
            functional.update(name, params, gs, states, step=t, backend=backend,
                              learning_rate=0.01, **clip)
        results[backend] = params
    for c, g in zip(results["cpu"], results["cuda"]):
        np.testing.assert_array_equal(c, g)


def test_scales_are_reset_when_a_step_stops_clipping(emulated):
    spec = REGISTRY["adam"]
    flags = spec.flags(spec.defaults(), "keras")
    scalars = step_rows(lambda t: scalar_row(spec, spec.defaults(), t, "keras"), [1] * 5, [0] * 5)
    params, grads = _problem(2)
    # The second step reuses the first step's grad arrays (new values, same memory), so the
    # table's addresses do not change and only the reset can restore the scales.
    second = [g.copy() for g in grads[1]]
    out = {}
    for name in ("cpu", "cuda"):
        backend = launch if name == "cuda" else cpu_backend
        ps = [p.copy() for p in params]
        states = [[np.zeros_like(p) for _ in range(2)] for p in ps]
        group = backend.group("float32", ps, states)
        gs = [g.copy() for g in grads[0]]
        backend.step(spec, flags, scalars, group, gs,
                     clip=GradClip(np.full(len(ps), 0.25), np.inf))
        for g, new in zip(gs, second):
            g[...] = new
        backend.step(spec, flags, scalars, group, gs, clip=NO_CLIP)
        out[name] = ps
    for c, g in zip(out["cpu"], out["cuda"]):
        np.testing.assert_array_equal(c, g)
    # And the second step really was unscaled: redo it by hand on a fresh group.
    ps = [p.copy() for p in params]
    states = [[np.zeros_like(p) for _ in range(2)] for p in ps]
    cpu_backend.step(spec, flags, scalars, cpu_backend.group("float32", ps, states), grads[0],
                     clip=GradClip(np.full(len(ps), 0.25), np.inf))
    cpu_backend.step(spec, flags, scalars, cpu_backend.group("float32", ps, states), second)
    for c, g in zip(out["cpu"], ps):
        np.testing.assert_array_equal(c, g)


@pytest.mark.parametrize("clip", [dict(clipnorm=1.0), dict(global_clipnorm=2.0)], ids=str)
def test_class_api_reuses_its_groups(clip, emulated):
    """An optimizer keeps its groups (tables, norm buffers) across steps."""
    import fusedopt

    out = {}
    for backend in ("cpu", "cuda"):
        params, grads = _problem(3)
        opt = fusedopt.Nadam(learning_rate=0.01, backend=backend, **clip)
        for gs in grads:
            opt.apply_gradients(list(zip(gs, params)))
        out[backend] = params
    for c, g in zip(out["cpu"], out["cuda"]):
        np.testing.assert_array_equal(c, g)
