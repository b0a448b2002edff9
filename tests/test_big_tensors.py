"""Tensors of more than 2**31 (and 2**32) elements, without allocating them.

Audit (kernels/*.cu, fusedopt/backends/cpu/loop.py, fusedopt/memory/table.py): element indices, chunk
starts and sizes are 64-bit everywhere (``long long`` in the kernels, int64 in the tables
and in Numba). A work item packs ``(tensor << 32) | chunk``: 2**32 chunks of a tensor,
2**31 tensors. Two things are 32-bit on purpose, and bounded: the tensor index and the
CUDA grid (one block per work item, at most 2**31 - 1, i.e. 2**47 elements at the default
chunk). One is 32-bit and should not be: the kernels' launch-table offsets (an xfail below).

- the table builders run on size arrays alone (fake addresses);
- the CUDA launch code runs against a runtime that records the launch instead of running it;
- the kernels (host build) and the CPU loop run the last chunks of a 2**33-element tensor
  through a table whose base addresses point below real, small buffers: every index past
  2**32 must land back inside them.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import launch, runtime
from fusedopt.engine.step import scalar_row
from fusedopt.memory import table as _table
from fusedopt.memory.group import make_group
from fusedopt.memory.steps import CONTROL_HEADER, as_rows

HERE = Path(__file__).resolve().parent
BIG = [2**31 + 5, 3, 2**33 + 7, 0, 2**32]
ADAM = REGISTRY["adam"]
FLAGS = (0, 0)  # Keras' Adam without amsgrad: two state slots
HYPER = {**ADAM.defaults(), "learning_rate": 0.01}


class Sized:
    """A stand-in array: shape and dtype, an address, no memory."""

    def __init__(self, shape, address, dtype="float32"):
        self.shape, self.dtype, self.address = tuple(shape), np.dtype(dtype), address

    @property
    def data(self):  # CuPy's spelling of the address, which NdarrayKind reads
        return type("Pointer", (), {"ptr": self.address})()


def _decode(items):
    return items >> 32, items & 0xFFFFFFFF


@pytest.mark.parametrize("chunk", [config.CUDA_CHUNK, config.CPU_CHUNK, 4096])
def test_work_items_cover_tensors_past_2_31_elements(chunk):
    sizes = np.array(BIG, np.int64)
    items = _table.work_items(sizes, chunk)
    tensors, chunks = _decode(items)
    for t, n in enumerate(BIG):
        mine = chunks[tensors == t]
        assert mine.tolist() == list(range(-(-n // chunk)))      # every chunk once, in order
        if n:
            begin, end = mine[-1] * chunk, min((mine[-1] + 1) * chunk, n)   # as the kernels do
            assert begin < n <= begin + chunk and end == n and begin.dtype == np.int64
    assert int(chunks.max()) * chunk > 2**32                      # starts past 2**32 elements
    table = _table.build(np.arange(4 * len(BIG), dtype=np.int64).reshape(4, len(BIG)), sizes,
                         chunk)
    assert table[_table.rows(2, len(BIG))["sizes"]:][:len(BIG)].tolist() == BIG


def test_packed_cpu_table_covers_tensors_past_2_31_elements():
    sizes = np.array(BIG, np.int64)
    items = _table.packed(_table.work_items(sizes, config.CPU_CHUNK), sizes, config.CPU_CHUNK)
    tensors, chunks = _decode(items)
    assert int(tensors[-1]) == 4 and int(chunks[-1]) * config.CPU_CHUNK == 2**32 - config.CPU_CHUNK
    assert sum(tensors == 2) == -(-BIG[2] // config.CPU_CHUNK)   # full chunks: a task each
    assert sum(tensors == 1) == 0    # 3 elements ride in the task of tensor 0's 5-element tail


def test_chunk_index_bits_are_checked_before_any_item_is_made():
    """2**32 chunks fit the 32 chunk bits; one more is refused - at once, not after the
    builder has allocated the items of a 2**35-element tensor."""
    with pytest.raises(ValueError, match=r"needs more than 2\*\*32 chunks of 8"):
        _table.work_items(np.array([2**32 * 8 + 1], np.int64), 8)
    item = (np.int64(3) << 32) | np.int64(2**32 - 1)
    assert [int(x) for x in _decode(item)] == [3, 2**32 - 1]


class RecordingRuntime:
    """The CUDA runtime interface, recording launches instead of running them."""

    name = "recording"

    def __init__(self):
        self.launches = []

    def accepts(self, array):
        return True

    def address(self, array):
        return array.address

    def to_device(self, host_array, out=None):
        return np.array(host_array, copy=True)

    def zeros(self, like, fill=0.0):
        return np.full(like.shape, fill, like.dtype)

    def module(self, family, names):
        runtime_self = self

        class Module:
            def get_function(self, name):
                def kernel(grid, block, args):
                    runtime_self.launches.append((name, grid, block, args))
                return kernel
        return Module()


def test_cuda_launch_shape_for_tensors_past_2_31_elements():
    rec = RecordingRuntime()
    previous = runtime.install(rec)
    try:
        params = [Sized((n,), 1 << 40 | (i << 36)) for i, n in enumerate(BIG)]
        states = [[Sized((n,), 2 << 40 | (i << 36) | k << 35) for k in range(2)]
                  for i, n in enumerate(BIG)]
        grads = [Sized((n,), 3 << 40 | (i << 36)) for i, n in enumerate(BIG)]
        group = launch.group("float32", params, states)
        launch.step(ADAM, FLAGS, scalar_row(ADAM, HYPER, 1, "keras"), group, grads)
    finally:
        runtime.install(previous)
    (name, grid, block, args), = rec.launches
    blocks = sum(-(-n // config.CUDA_CHUNK) for n in BIG)
    assert name == ADAM.entry("float32", FLAGS) and grid == (blocks,) and block == (256,)
    assert blocks < 2**31 - 1                       # CUDA's grid limit in x
    table, n_tensors, chunk = args[:3]
    assert (type(n_tensors), int(n_tensors)) == (np.int32, len(BIG))
    assert (type(chunk), int(chunk)) == (np.int64, config.CUDA_CHUNK)
    rows = _table.rows(2, len(BIG))
    assert table[rows["sizes"]: rows["sizes"] + len(BIG)].tolist() == BIG
    assert table[len(BIG): 2 * len(BIG)].tolist() == [g.address for g in grads]


def test_cpu_group_for_tensors_past_2_31_elements():
    params = [Sized((n,), 1 << 40 | (i << 36)) for i, n in enumerate(BIG)]
    states = [[Sized((n,), 2 << 40 | (i << 36) | k << 35) for k in range(2)]
              for i, n in enumerate(BIG)]
    group = make_group("float32", params, states, config.CPU_CHUNK, lambda a: a.address,
                       pack=True)
    assert group.sizes.tolist() == BIG and group.sizes.dtype == np.int64
    # one task per chunk, but the 3-element tensor shares the task of the tail before it
    assert group.table.n_work == sum(-(-n // config.CPU_CHUNK) for n in BIG) - 1


# --- the index arithmetic itself, past 2**32 elements ------------------------------------------

N_HUGE = 2**33 + 12345          # a tail after the last full chunk: the scalar path runs too
CHUNK = 65536


def _tail_problem():
    """Real buffers for the last two chunks of an N_HUGE-element Adam tensor, and a table
    whose addresses point to where element 0 would be: (table, buffers, first element)."""
    n_chunks = -(-N_HUGE // CHUNK)
    first = (n_chunks - 2) * CHUNK
    length = N_HUGE - first
    rng = np.random.default_rng(0)
    p, g = (rng.standard_normal(length).astype(np.float32) for _ in range(2))
    m, v = (np.abs(rng.standard_normal(length)).astype(np.float32) for _ in range(2))
    buffers = [p, g, m, v]
    base = [b.ctypes.data - first * 4 for b in buffers]
    assert all(a > 0 for a in base)
    full = _table.build(np.array(base, np.int64).reshape(4, 1), np.array([N_HUGE]), CHUNK)
    head = full[: _table.rows(2, 1)["work"]]
    table = np.concatenate([head, full[-2:]])           # only the last two work items
    assert [int(x) for x in _decode(table[-2:])[1]] == [n_chunks - 2, n_chunks - 1]
    assert (n_chunks - 2) * CHUNK > 2**32
    return table, buffers, first


def _same_update_on_small_arrays(buffers, backend):
    """The same elements updated as an ordinary tensor (elementwise: the bits must match)."""
    import fusedopt
    p, g, m, v = (b.copy() for b in buffers)
    fusedopt.functional.update("adam", [p], [g], [[m, v]], step=1, backend=backend,
                               learning_rate=0.01)
    return p, m, v


def test_kernels_index_past_2_32_elements(host_cuda, monkeypatch):
    from cuda_host import table_check
    table, buffers, _ = _tail_problem()
    expected = _same_update_on_small_arrays(buffers, "cuda")
    # The table points outside the arrays handed out (that is the point): skip that check.
    monkeypatch.setattr(table_check, "check", lambda *args, **kwargs: None)
    kernel = host_cuda.module("adam", launch.name_expressions("adam")).get_function(
        ADAM.entry("float32", FLAGS))
    rows = as_rows(scalar_row(ADAM, HYPER, 1, "keras"), 1)
    step = (host_cuda.to_device(rows.row_array(np.float32)), host_cuda.to_device(rows.control()),
            host_cuda.to_device(np.zeros(1, np.int32)))
    kernel((2,), (config.THREADS_PER_BLOCK,), (table, np.int32(1), np.int64(CHUNK), *step))
    for got, want in zip([buffers[0], buffers[2], buffers[3]], expected):
        assert got.tobytes() == want.tobytes()


def test_cpu_loop_indexes_past_2_32_elements():
    from fusedopt.backends.cpu.loop import run, specialize
    table, buffers, _ = _tail_problem()
    expected = _same_update_on_small_arrays(buffers, "cpu")
    variant = specialize(ADAM, FLAGS)
    run(variant, table, 1, CHUNK, tuple(scalar_row(ADAM, HYPER, 1, "keras")), np.int64(1))
    for got, want in zip([buffers[0], buffers[2], buffers[3]], expected):
        assert got.tobytes() == want.tobytes()


TABLE_OFFSET_SCRIPT = """
import mmap, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[3])
from cuda_host import HostRuntime, table_check
from fusedopt.backends.cuda import launch
table_check.check = lambda *a, **k: None          # it would walk every one of N tensors
host = HostRuntime(Path(sys.argv[1]))
from fusedopt.algorithms.registry import REGISTRY
kernel = host.module("sgd", launch.name_expressions("sgd")).get_function(
    REGISTRY["sgd"].entry("float32", (0, 0, 0)))
N = int(sys.argv[2])                              # tensors: the table has 6 N + 1 entries
HEADER = int(sys.argv[5])


def sparse(path, entries):                        # only the touched pages are real
    with open(path, "w+b") as f:
        f.truncate(entries * 8)
        return np.frombuffer(mmap.mmap(f.fileno(), entries * 8), dtype=np.int64)


table = sparse(Path(sys.argv[4]), 6 * N + 1)
control = sparse(Path(sys.argv[4] + ".control"), HEADER + 2 * N)   # base and mask per tensor
control[:HEADER] = [1, 1, 5, 0, -1, 0, 1]         # step 1, one row of 5 scalars, none in doubt
control[HEADER] = 1                               # tensor 0 is at step 1
p, g = np.ones(64, np.float32), np.full(64, 0.5, np.float32)
table[0], table[N], table[2 * N] = p.ctypes.data, g.ctypes.data, 64   # tensor 0 only
table[3 * N] = np.float64(1.0).view(np.int64)
table[4 * N] = np.float64(np.inf).view(np.int64)
table[5 * N] = 0                                  # tensor 0's stream (no random bits here)
table[6 * N] = 0                                  # block 0: tensor 0, chunk 0
rows = np.array([0.1, 0.0, 1.0, 0.0, 1.0], np.float32)
kernel((1,), (64,), (table, np.int32(N), np.int64(65536), rows, control, np.zeros(1, np.int32)))
assert (p == np.float32(1) - np.float32(0.1) * np.float32(0.5)).all(), p
print("updated")
"""


def _table_offsets(n_tensors, host_cache, tmp_path):
    return subprocess.run([sys.executable, "-c", TABLE_OFFSET_SCRIPT, str(host_cache / "host"),
                           str(n_tensors), str(HERE), str(tmp_path / "table.bin"),
                           str(CONTROL_HEADER)],
                          capture_output=True, text=True, timeout=300)


def test_kernel_table_offsets_below_2_31_entries(host_cuda, cuda_cache_dir, tmp_path):
    """The probe below works while every table offset fits an int (6 N < 2**31)."""
    out = _table_offsets(350_000_000, cuda_cache_dir, tmp_path)
    assert out.returncode == 0 and "updated" in out.stdout, out.stderr[-2000:]


def test_kernel_table_offsets_past_2_31_entries(host_cuda, cuda_cache_dir, tmp_path):
    """Past 2**31 table entries the offsets (row * n_tensors + t) are 64-bit: an int would
    wrap and read outside the table."""
    out = _table_offsets(430_000_000, cuda_cache_dir, tmp_path)  # 6 N = 2.58e9 > 2**31
    assert out.returncode == 0 and "updated" in out.stdout, out.stderr[-2000:]
