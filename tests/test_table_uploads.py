"""The CUDA launch table goes to the device whole once; afterwards only the rows that changed.

torch's autograd hands out new grad tensors every step (``zero_grad(set_to_none=True)``), so
the grad-address row changes every step: that row (8 bytes a tensor), not the table, is what
a step uploads. Counted in bytes through the host runtime (tests/cuda_host/runtime.py).

Besides the table, a step uploads its row of scalars (the bias corrections of its step, so a
new row every step) and the control block that says which row each tensor reads: a few dozen
bytes, the same for 1 tensor or 200 while every tensor is at the same step (the control
block, a few words per tensor, goes up with the first step and when it changes).
"""

import numpy as np
import pytest
from cuda_host import compare

from fusedopt.algorithms.registry import REGISTRY
from fusedopt.engine.clip import Clipping
from fusedopt.engine.engine import Engine
from fusedopt.memory.table import Table

STEPS = 4
ADDRESS_BYTES = np.dtype(np.int64).itemsize
#: The most a step's scalar row and control block may take (Adam: a handful of float32
#: scalars and a few int32 words).
SCALAR_BYTES = 64


def _table_bytes(host, engine) -> int:
    """Bytes uploaded so far into ``engine``'s device launch table."""
    table = engine.launch_groups()[0].group.device_table
    if table is None:  # before the first step
        return 0
    return host.uploaded_into.get(id(table if table.base is None else table.base), 0)


def _shapes(n, seed=3):
    rng = np.random.default_rng(seed)
    return [tuple(int(d) for d in rng.integers(1, 40, size=rng.integers(1, 3))) for _ in range(n)]


def _pair(shapes, clipping=None):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    twins = [p.copy() for p in params]
    engines = []
    for backend in ("cuda", "cpu"):
        engine = Engine(REGISTRY["adam"], "torch", backend=backend, per_param_steps=True,
                        **({} if clipping is None else dict(clipping=clipping)))
        engine.add_group(dict(learning_rate=0.01))
        engines.append(engine)
    engines[0].add_params(params)
    engines[1].add_params(twins)
    return engines, params, twins


def _new_grads(params, step):
    rng = np.random.default_rng(10 + step)
    return [rng.standard_normal(p.shape).astype(np.float32) for p in params]


def _assert_same(params, twins):
    for p, q in zip(params, twins):
        assert int(compare.ulp_distance(p, q).max()) <= compare.TOLERANCE["float32"]["ulps"]


def test_new_grad_tensors_upload_only_the_grad_row(host_cuda):
    """200 tensors, new grad arrays every step: the first step copies the table, each later
    one copies 200 addresses (1,600 bytes), and the device table equals the host's."""
    shapes = _shapes(200)
    (cuda, cpu), params, twins = _pair(shapes)
    per_step = []
    for t in range(STEPS):
        grads = _new_grads(params, t)   # new arrays: new addresses in the grad row
        before, table_before = host_cuda.uploaded_bytes, _table_bytes(host_cuda, cuda)
        cuda.step(grads)
        cpu.step([g.copy() for g in grads])
        table = _table_bytes(host_cuda, cuda) - table_before
        per_step.append(table)
        if t > 0:  # the first step also uploads the control block, a word per tensor
            assert 0 < host_cuda.uploaded_bytes - before - table <= SCALAR_BYTES
    group = cuda.launch_groups()[0].group
    assert per_step[0] == group.table.array.nbytes
    assert per_step[1:] == [len(shapes) * ADDRESS_BYTES] * (STEPS - 1)
    np.testing.assert_array_equal(group.device_table, group.table.array)
    _assert_same(params, twins)


def test_the_same_grad_buffers_upload_nothing_after_the_first_step(host_cuda):
    (cuda, cpu), params, twins = _pair(_shapes(20))
    grads = [np.zeros_like(p) for p in params]
    for t in range(STEPS):
        for g, new in zip(grads, _new_grads(params, t)):
            g[...] = new
        cuda.step(grads)
        cpu.step(grads)
        if t == 0:
            first = _table_bytes(host_cuda, cuda)
    assert _table_bytes(host_cuda, cuda) == first == \
        cuda.launch_groups()[0].group.table.array.nbytes
    _assert_same(params, twins)


def test_a_new_clip_limit_uploads_its_row(host_cuda):
    """The limit row changes when the value clip does: that row only, with the grad row."""
    (cuda, cpu), params, twins = _pair(_shapes(30), Clipping(clipvalue=0.5))
    cuda.step(_new_grads(params, 0))
    cpu.step(_new_grads(params, 0))
    for engine in (cuda, cpu):
        engine.clipping = Clipping(clipvalue=0.25)
    before = _table_bytes(host_cuda, cuda)
    cuda.step(_new_grads(params, 1))
    cpu.step(_new_grads(params, 1))
    assert _table_bytes(host_cuda, cuda) - before == 2 * len(params) * ADDRESS_BYTES
    group = cuda.launch_groups()[0].group
    np.testing.assert_array_equal(group.device_table, group.table.array)
    _assert_same(params, twins)


def test_changes_since_names_the_rows_written_after_a_version():
    addresses = np.arange(3 * 4, dtype=np.int64).reshape(3, 4)  # 1 slot, 4 tensors
    table = Table(addresses, np.array([5, 6, 7, 8]), chunk=4)
    assert table.changes_since(-1) is None
    start = table.version
    table.set_grads([11, 12, 13, 14])
    assert table.changes_since(start) == [slice(4, 8)]
    after_grads = table.version
    table.set_grads([11, 12, 13, 14])   # the same addresses: nothing written
    table.set_limit(2.0)
    assert table.changes_since(after_grads) == [slice(20, 24)]
    assert sorted(s.start for s in table.changes_since(start)) == [4, 20]
    assert table.changes_since(table.version) == []
    assert list(table.array[4:8]) == [11, 12, 13, 14]


@pytest.mark.parametrize("tensors", [1, 200])
def test_upload_bytes_per_step_when_grads_move(host_cuda, tensors, record_property):
    """The figure benchmarks/RESULTS.md quotes: bytes a step uploads once grads move."""
    shapes = _shapes(tensors)
    (cuda, _), params, _ = _pair(shapes)
    cuda.step(_new_grads(params, 0))
    before, table_before = host_cuda.uploaded_bytes, _table_bytes(host_cuda, cuda)
    cuda.step(_new_grads(params, 1))
    moved = _table_bytes(host_cuda, cuda) - table_before
    scalars = host_cuda.uploaded_bytes - before - moved
    whole = cuda.launch_groups()[0].group.table.array.nbytes
    record_property("upload_bytes", moved)
    record_property("scalar_bytes", scalars)
    record_property("table_bytes", whole)
    assert moved == tensors * ADDRESS_BYTES < whole
    assert 0 < scalars <= SCALAR_BYTES
