"""Two trees of fusedopt give the same bits: every variant of every public optimizer whose
state is one array per slot (not Adafactor's factored moments nor Muon's matrices), on a
sample of storages, on the CPU backend and on the CUDA backend run through the host runtime
(tests/cuda_host: the kernels of kernels/*.cu built with g++).

    python benchmarks/same_bits.py --old 1cc2c56            # against this checkout
    python benchmarks/same_bits.py --old A --new B          # two commits

Each tree runs in its own process (``PYTHONPATH`` = the tree and its tests/), with its own
Numba cache; the parent compares the params and every state array byte for byte and prints
one line per (backend, optimizer) with the runs that matched. Exit 1 on any difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS = 5
SHAPES = ((4097,), (37, 129), (3,))

#: name -> (param dtype, state dtype, extra arguments of functional.update, extra slot)
STORAGES = {
    "float32": ("float32", "float32", {}, None),
    "bf16, fp32 state": ("bfloat16", "float32", {}, None),
    "bf16, bf16 state": ("bfloat16", "bfloat16", {}, None),
    "bf16 remainder": ("bfloat16", "float32", {"master_weights": "remainder"}, "int16"),
    "bf16 stochastic": ("bfloat16", "bfloat16", {"stochastic_rounding": True, "seed": 7},
                        None),
    "bf16 kahan": ("bfloat16", "float32", {"kahan_summation": True}, "bfloat16"),
}


def _worker(out: str, backends: list[str]) -> None:
    import ml_dtypes  # noqa: F401  (bfloat16 for NumPy)
    from cuda_host import HostRuntime, compare

    import fusedopt
    try:
        from fusedopt.backends.cuda import runtime
    except ImportError:
        from fusedopt._cuda import runtime
    dtypes = {"float32": np.float32, "bfloat16": np.dtype("bfloat16"), "int16": np.int16}
    rng = np.random.default_rng(0)
    params0 = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]
    results = {}
    if "cuda" in backends:
        runtime.install(HostRuntime(Path(tempfile.gettempdir()) / "fusedopt-same-bits-host"))
    for backend in backends:
        for name, spec in sorted(fusedopt.REGISTRY.items()):
            if spec.factored is not None or spec.matrix is not None or not spec.public:
                continue  # state not one array per slot the param's shape, or no class
            for v_index, variant in enumerate(compare.variants(spec)):
                hp = compare.full_hyper(spec, variant)
                n_slots = len(spec.slots(spec.flags(hp, variant.convention)))
                for storage, (pdt, sdt, extra, slot) in STORAGES.items():
                    params = [p.astype(dtypes[pdt]) for p in params0]
                    states = [[np.full(p.shape, spec.slot_init(hp), dtypes[sdt])
                               for _ in range(n_slots)] for p in params]
                    if slot is not None:
                        for p, st in zip(params, states):
                            st.append(np.zeros(p.shape, dtypes[slot]))
                    for step, gs in enumerate(grads, start=1):
                        g = [x.astype(dtypes[pdt]) for x in gs]
                        fusedopt.functional.update(name, params, g, states, step=step,
                                                   convention=variant.convention,
                                                   backend=backend, **extra, **variant.hp)
                    key = f"{backend}|{name}|{v_index}|{storage}"
                    arrays = [a for p, st in zip(params, states) for a in (p, *st)]
                    results[key] = np.frombuffer(b"".join(a.tobytes() for a in arrays),
                                                 np.uint8)
    np.savez(out, **results)


def _tree(rev: str | None, root: Path, scratch: Path) -> Path:
    if rev is None:
        return root
    target = scratch / rev.replace("/", "_")
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="a commit of the first tree")
    parser.add_argument("--new", default=None, help="a commit of the second (default: here)")
    parser.add_argument("--backends", default="cpu,cuda")
    parser.add_argument("--cache", help="keep each tree's Numba cache here between runs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    backends = args.backends.split(",")
    if args.worker:
        _worker(args.worker, backends)
        return 0
    root = HERE.parent
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        runs = {}
        for label, rev in (("old", args.old), ("new", args.new)):
            tree = _tree(rev, root, scratch)
            env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'tests'}",
                       NUMBA_CACHE_DIR=str(Path(args.cache or scratch) / f"numba-{label}"),
                       KERAS_BACKEND="torch")
            out = scratch / f"{label}.npz"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--old", "-",
                            "--backends", args.backends, "--worker", str(out)],
                           env=env, check=True, cwd=tree)
            runs[label] = dict(np.load(out))
        old, new = runs["old"], runs["new"]
        if set(old) - set(new):
            print(f"runs the new tree lacks: {sorted(set(old) - set(new))[:5]}")
            return 1
        added = sorted({key.split("|")[1] for key in set(new) - set(old)})
        if added:
            print(f"optimizers only the new tree has (not compared): {', '.join(added)}")
        rows: dict[tuple, list] = {}
        for key in sorted(old):  # every run of the old tree
            backend, name, _, _ = key.split("|")
            rows.setdefault((backend, name), []).append(np.array_equal(old[key], new[key]))
        bad = 0
        print(f"{'backend':8} {'optimizer':10} same bits (runs: variants x {len(STORAGES)} "
              f"storages, {STEPS} steps, shapes {SHAPES})")
        for (backend, name), same in rows.items():
            bad += same.count(False)
            print(f"{backend:8} {name:10} {same.count(True)}/{len(same)}")
        print(f"storages: {', '.join(STORAGES)}")
        print("identical" if bad == 0 else f"{bad} runs differ")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
