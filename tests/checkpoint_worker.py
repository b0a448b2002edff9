"""Half of a training run, or its resumption from a checkpoint, in a process of its own.

    python tests/checkpoint_worker.py first  BACKEND FOLDER [HOST_CACHE]   # K steps, save
    python tests/checkpoint_worker.py second BACKEND FOLDER [HOST_CACHE]   # load, the rest

Every registered optimizer (its variant with the most state slots, weight decay on) in
float32, and Adam in every dtype (``cases``), on ``BACKEND`` ("cpu", or "cuda"
through the host runtime of tests/cuda_host, whose compiled kernels are in HOST_CACHE).
tests/test_checkpoint.py runs the same steps without a break and compares the bits.
Params travel as .npy files (``allow_pickle=False``), the optimizer as a fusedopt checkpoint.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import variants  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt.algorithms.registry import REGISTRY  # noqa: E402

#: Awkward shapes: one element, odd, 2-D, empty, 0-d.
SHAPES = [(1,), (5,), (37, 53), (0,), ()]
FIRST_STEPS, TOTAL_STEPS = 3, 7
#: Learning rate of every case: large enough that every step moves float32 params.
LEARNING_RATE = 0.01


def dtype_of(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, name))


def fullest(spec):
    """The variant of ``spec`` with the most state slots (the first found among equals)."""
    found = variants.variants(spec)
    hp, convention, _ = max(found, key=lambda v: len(spec.slots(v[2])))
    return dict(hp, learning_rate=LEARNING_RATE), convention


#: Every optimizer resumes in these dtypes; the other dtypes its registry entry offers
#: (bfloat16, float64, float16) are resumed by EVERY_DTYPE_OPTIMIZER alone. Saving and
#: loading do not depend on the optimizer or the dtype (16-bit state, masters and remainders
#: resume bit for bit in tests/test_storage_checkpoints.py and
#: tests/test_torch_16bit_checkpoints.py), and each case costs a compile of its own.
EVERY_OPTIMIZER_DTYPES = ("float32",)
EVERY_DTYPE_OPTIMIZER = "adam"


def cases(backend: str = "cpu"):
    """(label, registry name, dtype, hyperparameters, convention) of every case: every
    optimizer the backend has kernels for (Adafactor and Muon have none on CUDA yet), but
    Muon, whose 2-D params these shapes are not, and the passes other optimizers run (no
    class saves them: schedule-free's switch, whose points the schedule-free cases save)."""
    for name in sorted(REGISTRY):
        spec = REGISTRY[name]
        if not spec.public:
            continue
        if backend == "cuda" and not spec.on_cuda:
            continue
        if spec.matrix is not None:  # 2-D params only: tests/test_muon.py resumes Muon
            continue
        hp, convention = fullest(spec)
        for dtype in spec.dtypes:
            if dtype in EVERY_OPTIMIZER_DTYPES or name == EVERY_DTYPE_OPTIMIZER:
                yield f"{name}-{dtype}", name, dtype, hp, convention


def problem(label: str, dtype: str):
    """Initial params and every step's grads of case ``label``, the same in every process."""
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    dt = dtype_of(dtype)
    params = [np.asarray(rng.standard_normal(s)).astype(dt) for s in SHAPES]
    grads = [[np.asarray(rng.standard_normal(s)).astype(dt) for s in SHAPES]
             for _ in range(TOTAL_STEPS)]
    return params, grads


def step(opt, params, grads) -> None:
    opt.apply_gradients(zip(grads, params))


def uninterrupted(backend: str) -> dict:
    """label -> (params, state arrays) after TOTAL_STEPS steps without a break."""
    out = {}
    for label, name, dtype, hp, convention in cases(backend):
        params, grads = problem(label, dtype)
        opt = variants.make(name, hp, convention, backend)
        for g in grads:
            step(opt, params, g)
        out[label] = (params, [np.array(s) for s in opt.variables])
    return out


def first(backend: str, folder: Path) -> None:
    for label, name, dtype, hp, convention in cases(backend):
        params, grads = problem(label, dtype)
        opt = variants.make(name, hp, convention, backend)
        for g in grads[:FIRST_STEPS]:
            step(opt, params, g)
        opt.save(folder / f"{label}.safetensors")
        for i, p in enumerate(params):
            np.save(folder / f"{label}-param{i}.npy", _storable(p))


def second(backend: str, folder: Path) -> None:
    for label, name, dtype, hp, convention in cases(backend):
        _, grads = problem(label, dtype)
        params = [np.load(folder / f"{label}-param{i}.npy", allow_pickle=False)
                  .view(dtype_of(dtype)) for i in range(len(SHAPES))]
        opt = fusedopt.load(folder / f"{label}.safetensors", params)
        assert opt.iterations == FIRST_STEPS, (label, opt.iterations)
        for g in grads[FIRST_STEPS:]:
            step(opt, params, g)
        for i, p in enumerate(params):
            np.save(folder / f"{label}-final{i}.npy", _storable(p))
        for k, s in enumerate(opt.variables):
            np.save(folder / f"{label}-state{k}.npy", _storable(np.array(s)))


def _storable(a: np.ndarray) -> np.ndarray:
    """``a``, or its bits for a dtype .npy files cannot hold without pickle (bfloat16)."""
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "V" or "bfloat" in a.dtype.name \
        else a


def install_host_runtime(cache: Path) -> None:
    from cuda_host import HostRuntime

    from fusedopt.backends.cuda import runtime
    runtime.install(HostRuntime(cache / "host"))


if __name__ == "__main__":
    phase, backend, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if backend == "cuda":
        install_host_runtime(Path(sys.argv[4]))
    {"first": first, "second": second}[phase](backend, folder)
