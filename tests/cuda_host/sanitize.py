"""Run every kernel under AddressSanitizer and UndefinedBehaviorSanitizer, in a subprocess.

``python -m cuda_host.sanitize`` (with tests/ on the path) builds kernels/*.cu with
``-fsanitize=address,undefined`` and runs the real CUDA backend over the awkward sizes, a
misaligned view and shrunk launch sizes, for every registered optimizer and every entry
point of float32 and float64 params, and of the sampled storages
(``fusedopt.backends.cuda.launch.sampled_storages``: float16 params, and bfloat16 params in every
mode), and q8 and q4 state of the optimizers that have quantized kernels (their sampled
quantized storages, ``quantized.sampled_storages``: float32 params, bfloat16 stochastic,
a bfloat16 master; the shapes below and above ``min_quantized_size``, so float32
state beside the codes; Muon's quantized momentum over its matrices and one larger). Any
out-of-bounds access, misaligned 16-byte access or undefined behaviour ends the process
with the sanitizer's report and a non-zero status.

AddressSanitizer must be loaded before anything else, so the parent (see ``command``)
starts Python with its runtime in LD_PRELOAD; ``--source family=path`` runs a modified
copy of a family's source instead (the tests' broken kernels).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Shapes run together in one call per step, plus a misaligned param after them.
SHAPES = ((1,), (3,), (4097,), (278011,), (0,), (37, 129))

#: (chunk, threads per block, shapes, steps): the defaults over every shape, then many small
#: blocks with idle threads over the small ones (the big one would only repeat them, slowly).
RUNS = ((None, None, SHAPES, 1),
        (64, 32, tuple(s for s in SHAPES if s != (278011,)), 2))

#: A factored moment's (Adafactor's) shapes besides those: 3-D, single rows and columns and
#: empty slices (its state is kept per row and column, not per element).
FACTORED_SHAPES = ((3, 5, 7), (1, 1), (64, 1), (1, 300), (2, 0, 3))

#: An optimizer of whole matrices (Muon): 2-D params only, two of one shape (one stack),
#: tall, wide, one row, and a misaligned view last.
MATRIX_SHAPES = ((24, 8), (24, 8), (13, 24), (1, 16), (9, 13))

#: Its quantized momentum: those, and one matrix over ``min_quantized_size`` (4096) with a
#: partial last block of both formats (the others keep float32 state beside it).
QUANTIZED_MATRIX = (*MATRIX_SHAPES[:-1], (65, 67), MATRIX_SHAPES[-1])


def asan_runtime() -> str | None:
    """Path of g++'s AddressSanitizer runtime, or None if this compiler has none."""
    from cuda_host import build
    result = subprocess.run([build.compiler(), "-print-file-name=libasan.so"],
                            capture_output=True, text=True, check=False)
    path = result.stdout.strip()
    return path if result.returncode == 0 and os.path.isabs(path) and os.path.exists(path) \
        else None


def command(cache_dir: Path, sources: dict[str, Path] | None = None,
            entry: str | None = None, optimizers=()) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run this module under the sanitizers (``optimizers``:
    registry names to run alone, with their kernels only)."""
    runtime = asan_runtime()
    if runtime is None:
        raise RuntimeError("g++ has no AddressSanitizer runtime (libasan)")
    argv = [sys.executable, "-m", "cuda_host.sanitize", "--cache", str(cache_dir)]
    for family, path in (sources or {}).items():
        argv += ["--source", f"{family}={path}"]
    if entry:
        argv += ["--entry", entry]
    for name in optimizers:
        argv += ["--optimizer", name]
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=runtime,
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",  # Python itself never frees everything
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
        PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE.parents[1]),
                                    env.get("PYTHONPATH", "")]),
    )
    return argv, env


def _covering_variants(spec, compare):
    """The fewest variants that reach every entry point of ``spec``, per dtype."""
    chosen = {}
    for variant in compare.variants(spec):
        key = spec.flags(compare.full_hyper(spec, variant), variant.convention)
        chosen.setdefault(key, variant)
    return list(chosen.values())


def _other_storages(compare):
    """The sampled storages but the default ones of float32 and float64 params."""
    from fusedopt.backends.cuda.launch import sampled_storages
    return [st for st in sampled_storages()
            if not (st.param in compare.BASE_DTYPES and st.state == st.param)]


def _quantized_storages(spec):
    """The sampled quantized storages, for an optimizer with quantized kernels."""
    from fusedopt.backends.cuda import quantized
    return quantized.sampled_storages(spec.kernel) if quantized.covers(spec) else ()


def _run_storage(spec, variant, storage, problem) -> None:
    """``problem``'s steps on ``storage`` through the CUDA backend (the engine directly:
    state dtype and master from the storage, grads of its grad dtype)."""
    import numpy as np
    import reference

    from fusedopt.engine.engine import Engine
    from fusedopt.memory.storage import mode_options
    pdt, gdt = reference.as_dtype(storage.param), reference.as_dtype(storage.grad)
    params = []
    for t, p in enumerate(problem.params):
        if t in problem.misaligned:
            base = np.zeros(p.size + 1, dtype=pdt)
            view = base[1:].reshape(p.shape)
            view[...] = p.astype(pdt)
            params.append(view)
        else:
            params.append(p.astype(pdt))
    engine = Engine(spec, variant.convention, backend="cuda", state_dtype=storage.state,
                    **mode_options(storage.mode))
    engine.add_group(variant.hp)
    engine.add_params(params)
    for grads in problem.grads:
        engine.step([g.astype(gdt) for g in grads])
    # The switch's kernels, y float32 beside the codes (it reads z, float32, as the grad:
    # float32 params only without a master).
    if spec.switch is not None and storage.quantized and storage.param == "float32":
        from fusedopt.engine.modes import switch
        switch(engine, True)
        switch(engine, False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--source", action="append", default=[],
                        help="family=path: run this source text instead of kernels/family.cu")
    parser.add_argument("--entry", help="build and run only this entry point (a name "
                        "expression such as 'adam<float, 0, 0>')")
    parser.add_argument("--optimizer", action="append", default=[],
                        help="run only this registered optimizer, with its kernels only")
    args = parser.parse_args(argv)

    from cuda_host import HostRuntime, compare
    from fusedopt import config
    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.backends.cuda import launch, quantized, runtime
    sources = dict(s.split("=", 1) for s in args.source)
    sampled = dict(launch.sampled_entry_points())
    chosen = [s for s in REGISTRY.values() if (s.on_cuda or s.matrix is not None)
              and (not args.optimizer or s.name in args.optimizer)]
    if args.optimizer:
        families = ({s.kernel for s in chosen} | {s.reduce_kernel for s in chosen}
                    | {p.kernel for s in chosen for p in launch.matrix_passes(s)}
                    | {quantized.family(quantized.stepped_by(s).kernel) for s in chosen}
                    | {quantized.family(s.reduce_kernel) for s in chosen if s.reduce_kernel})
        sampled = {f: names for f, names in sampled.items() if f in families}
    texts = {f: Path(p).read_text() for f, p in sources.items()}
    only = args.entry or {n for names in sampled.values() for n in names}

    def fresh_runtime():
        """A runtime of its own for each optimizer's runs: the table check looks every
        operand up among the arrays its runtime has handed out, all of which it holds, so
        one runtime for the whole run would make each launch's check slower than the last
        (and keep every array of every earlier optimizer alive). The built libraries are
        shared through the cache."""
        host = HostRuntime(args.cache / "host", sanitize=True, sources=texts, only=only)
        runtime.install(host)
        return host

    hosts = []  # each optimizer's runtime, for the launches they made
    if not sources and args.entry is None:  # every family at once, one g++ per core
        from cuda_host import build
        build.build_all(sampled, args.cache / "host", workers=os.cpu_count() or 1,
                        sanitize=True)
    for chunk, threads, shapes, steps in RUNS:
        if chunk is not None:
            config.CUDA_CHUNK, config.THREADS_PER_BLOCK = chunk, threads
        problem = compare.make_problem((*shapes, (compare.MISALIGNED_SIZE,)), steps, seed=11,
                                       misaligned=(len(shapes),))
        factored = compare.make_problem((*shapes, *FACTORED_SHAPES, (9, 13)), steps,
                                        seed=12, misaligned=(len(shapes) + 5,))
        matrices = compare.make_problem(MATRIX_SHAPES, steps, seed=13,
                                        misaligned=(len(MATRIX_SHAPES) - 1,))
        quantized_matrices = compare.make_problem(QUANTIZED_MATRIX, steps, seed=14,
                                                  misaligned=(len(QUANTIZED_MATRIX) - 1,))
        quantized_done = set()
        for spec in chosen:
            host = fresh_runtime()
            hosts.append(host)
            if spec.matrix is not None:  # its passes' kernels, Newton-Schulz between them
                from fusedopt.memory.storage import Storage
                for dtype in compare.BASE_DTYPES if args.entry is None else ():
                    for variant in _covering_variants(spec, compare):
                        _run_storage(spec, variant, Storage(dtype, dtype, dtype), matrices)
                # its quantized momentum, over the small blocks only (as the others')
                part = quantized.stepped_by(spec)
                built = {st for st, _, _ in quantized.entries(part)}
                for storage in (_quantized_storages(part) if chunk is not None
                                and args.entry is None else ()):
                    for variant in _covering_variants(spec, compare) if storage in built else ():
                        _run_storage(spec, variant, storage, quantized_matrices)
                continue
            if spec.factored is not None:  # the engine makes its factored state
                from fusedopt.memory.storage import Storage
                for dtype in compare.BASE_DTYPES:
                    for variant in _covering_variants(spec, compare):
                        if args.entry in (None, compare.entry_of(spec, variant, dtype)):
                            _run_storage(spec, variant, Storage(dtype, dtype, dtype), factored)
                continue
            for dtype in compare.BASE_DTYPES:
                for variant in _covering_variants(spec, compare):
                    if args.entry in (None, compare.entry_of(spec, variant, dtype)):
                        compare.run_backend(spec, variant, problem, dtype, "cuda")
            # Other storages over the small shapes and blocks only: the big tensor repeats
            # the default launch sizes, which the runs above cover, at ASan's -O0 speed.
            for storage in _other_storages(compare) if chunk is not None else ():
                for variant in _covering_variants(spec, compare):
                    flags = spec.flags(compare.full_hyper(spec, variant), variant.convention)
                    if args.entry in (None, spec.entry(storage, flags)):
                        _run_storage(spec, variant, storage, problem)
            # Quantized state: one family's kernels once, in the variant with the most slots
            # (its cooperative launches switch fibers at every shuffle, slow under ASan).
            for storage in (_quantized_storages(spec) if chunk is not None
                            and spec.kernel not in quantized_done else ()):
                variant = max(_covering_variants(spec, compare),
                              key=lambda v: len(spec.slots(spec.flags(
                                  compare.full_hyper(spec, v), v.convention))))
                flags = spec.flags(compare.full_hyper(spec, variant), variant.convention)
                if args.entry in (None, quantized.entry(spec, storage, flags)):
                    _run_storage(spec, variant, storage, problem)
            quantized_done.add(spec.kernel)
    launched = [name for host in hosts for name, _, _ in host.launches]
    print(f"sanitizers clean over {len(launched)} launches")
    print("kernels:", " ".join(sorted({name.split("<")[0] for name in launched})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
