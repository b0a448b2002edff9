"""Bytes the CUDA backend uploads per step when every grad is a new tensor (torch's
``zero_grad(set_to_none=True)``), counted through the host runtime (tests/cuda_host), which
runs the CUDA kernels on the CPU and counts every host-to-device copy.

The model is bench_torch_loop.py's: 100 Linear(448, 448) layers, 200 tensors. The host
runtime steps a copy scaled down 64x in elements (the same 200 tensors: the grad row does
not depend on their sizes); the whole table of the full-size model, which a step used to
re-copy, is computed from its launch table.

    python benchmarks/cuda_table_uploads.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cuda_host import HostRuntime  # noqa: E402

from fusedopt import config  # noqa: E402
from fusedopt.algorithms.registry import REGISTRY  # noqa: E402
from fusedopt.backends.cuda import launch, runtime  # noqa: E402
from fusedopt.engine.engine import Engine  # noqa: E402
from fusedopt.memory.storage import Storage  # noqa: E402

LAYERS, WIDTH, STEPS = 100, 448, 5


def shapes(scale: int = 1):
    return [s for _ in range(LAYERS) for s in ((WIDTH * WIDTH // scale,), (WIDTH,))]


def main() -> None:
    host = HostRuntime(Path(tempfile.mkdtemp()) / "host")
    runtime.install(host)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes(64)]
    engine = Engine(REGISTRY["adam"], "torch", backend="cuda", per_param_steps=True)
    engine.add_group(dict(learning_rate=1e-3))
    engine.add_params(params)
    per_step, scalars = [], []
    for _ in range(STEPS):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]  # new
        before, table_before = host.uploaded_bytes, _table_bytes(host, engine)
        engine.step(grads)
        per_step.append(_table_bytes(host, engine) - table_before)
        scalars.append(host.uploaded_bytes - before - per_step[-1])
    full = [np.empty(s, np.float32) for s in shapes()]
    plain = Storage("float32", "float32", "float32", "plain")
    whole = launch.group(plain, full, [[p, p] for p in full]).table.array.nbytes
    print(f"tensors: {len(params)}; CUDA_CHUNK {config.CUDA_CHUNK}")
    print(f"launch-table bytes uploaded per step (host runtime, steps 1..{STEPS}): {per_step}")
    print(f"scalar rows and control block uploaded per step: {scalars}")
    print(f"whole table of the full-size model ({sum(p.size for p in full):,} elements): "
          f"{whole:,} bytes, re-copied every step before; now {per_step[-1]:,} "
          f"({per_step[-1] / whole:.2%})")


def _table_bytes(host, engine) -> int:
    table = engine.launch_groups()[0].group.device_table
    if table is None:
        return 0
    return host.uploaded_into.get(id(table if table.base is None else table.base), 0)


if __name__ == "__main__":
    main()
