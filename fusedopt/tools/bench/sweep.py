"""The benchmark engine: a sweep of (optimizer, dtype, size) cases, repeated, each timed
interleaved, by the isolated method (each contender in a worker process of its own) or in
one process.

Reusable from scripts: ``measure(...)`` times one case once; ``run(settings)`` runs the
whole sweep ``settings.repeats_of_sweep`` times and measures the traffic ceiling of a
reference case at its start and its end (:class:`Drift`).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field

from ...algorithms import registry as _registry
from . import contenders as cs
from . import timing
from .contention import Contention, Watch
from .isolated import SWEEP_BUILDER, Pool, time_isolated
from .machine import available_memory
from .results import ISOLATED, METHODS, SAME_PROCESS, Result, Run
from .traffic import traffic
from .worker import describe_process

#: Default sweep: powers of two from 2**SIZE_LOW to 2**SIZE_HIGH, every SIZE_STEP-th.
SIZE_LOW, SIZE_STEP = 10, 2
SIZE_HIGH = {"cpu": 26, "cuda": 28}
#: --quick: few sizes, two optimizers, one dtype, few rounds (about a minute on 2 cores).
QUICK_SIZES = (2**10, 2**16, 2**20)
QUICK_OPTIMIZERS = ("adam", "sgd")
QUICK_ROUNDS = 5
#: Interleaved rounds per case in each repeat of the sweep, and repeats of the sweep.
DEFAULT_ROUNDS = 7
DEFAULT_REPEATS_OF_SWEEP = 3
#: A case is skipped when its arrays would take more than this share of free memory.
MEMORY_SHARE = 0.7
#: The drift probe: the traffic ceiling of float32 Adam's bytes at this size (out of cache).
PROBE_OPTIMIZER, PROBE_DTYPE = "adam", "float32"
PROBE_SIZE = {"cpu": 2**25, "cuda": 2**27}
PROBE_ROUNDS = 7
#: A change of the probe's bandwidth between start and end above this is reported.
DRIFT_LIMIT = 0.20


def default_sizes(backend: str) -> tuple[int, ...]:
    return tuple(2**e for e in range(SIZE_LOW, SIZE_HIGH[backend] + 1, SIZE_STEP))


@dataclass
class Settings:
    optimizers: tuple[str, ...]
    sizes: tuple[int, ...]
    dtypes: tuple[str, ...]
    backend: str
    rounds: int = DEFAULT_ROUNDS
    seed: int = 0
    torch: bool = True
    min_sample_s: float = timing.MIN_SAMPLE_S
    method: str = ISOLATED
    repeats_of_sweep: int = DEFAULT_REPEATS_OF_SWEEP
    #: Calls per block; None: enough for the fastest contender's block to last min_sample_s.
    calls_per_block: int | None = None
    #: Contenders to time (the ceiling always is); None: all of them.
    contenders: tuple[str, ...] | None = None
    #: Measure the drift probe at the start and the end.
    probe: bool = True


@dataclass
class Drift:
    """The probe ceiling's bandwidth at the start and the end of a run."""

    case: str
    start_gb_per_s: float
    end_gb_per_s: float

    @property
    def change(self) -> float:
        return (self.end_gb_per_s - self.start_gb_per_s) / self.start_gb_per_s

    @property
    def exceeded(self) -> bool:
        return abs(self.change) > DRIFT_LIMIT


@dataclass
class Outcome:
    settings: Settings
    results: list[Result]
    drift: Drift | None = None
    #: Per worker (isolated) or for this process: threads and what was imported.
    processes: dict = field(default_factory=dict)
    load_average: dict = field(default_factory=dict)
    #: What shared the machine during the run (fusedopt/tools/bench/contention.py).
    contention: Contention | None = None


def resolve_backend(requested: str) -> str:
    """'cpu' or 'cuda'; 'auto' picks CUDA when CuPy sees a device."""
    from .machine import cuda_status

    if requested == "auto":
        return "cuda" if cuda_status()[0] else "cpu"
    if requested == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise SystemExit(f"--backend cuda: {why}; use --backend cpu")
    elif requested != "cpu":
        raise SystemExit(f"--backend must be auto, cpu or cuda, got {requested!r}")
    return requested


def _empty_result(name: str, size: int, dtype: str, backend: str, method: str,
                  chosen) -> Result:
    spec = _registry.lookup(name)
    result = Result(spec.name, size, dtype, backend,
                    traffic(spec, spec.flags(spec.defaults(), "keras"), dtype), method)
    result.contender_bytes = cs.contender_bytes(cs.FUSED, spec.name, size, dtype)
    result.working_set = cs.working_set(spec.name, size, dtype, chosen, method == ISOLATED)
    return result


def _skip_reason(result: Result, spec) -> str | None:
    if result.dtype not in spec.dtypes:
        return f"skipped: {spec.name} does not support {result.dtype}"
    free = available_memory(result.backend)
    if free is not None and result.working_set > MEMORY_SHARE * free:
        return (f"skipped: needs {result.working_set / 2**30:.1f} GiB, "
                f"{free / 2**30:.1f} GiB free")
    return None


def _chosen(name: str, backend: str, torch: bool, only) -> tuple[str, ...]:
    return tuple(c for c in cs.names_for(_registry.lookup(name).name, backend, torch)
                 if only is None or c in only or c == cs.CEILING)


def _measure_isolated(result, chosen, pool: Pool, rounds, seed, calls_per_block,
                      min_sample_s, on_round) -> Run | None:
    kwargs = {name: dict(contender=name, optimizer=result.optimizer, size=result.size,
                         dtype=result.dtype, backend=result.backend, seed=seed)
              for name in chosen}
    return time_isolated(pool, SWEEP_BUILDER, kwargs, rounds, result.notes, calls_per_block,
                         min_sample_s, on_round)


def _measure_same_process(result, chosen, rounds, seed, torch, calls_per_block,
                          min_sample_s, on_round) -> Run | None:
    case = cs.make_case(result.optimizer, result.size, result.dtype, result.backend, seed,
                        torch)
    result.notes.extend(n for n in case.notes if n not in result.notes)
    picked = [c for c in case.contenders if c.name in chosen]
    sync = timing.synchronizer(result.backend)
    kept, first = timing.warm_up(picked, sync, result.notes)
    try:
        if not kept:
            return None
        return timing.time_rounds(kept, first, rounds, calls_per_block, min_sample_s,
                                  on_round)
    finally:
        del case, picked, kept
        gc.collect()


def measure(name: str, size: int, dtype: str, backend: str, rounds: int, seed: int = 0,
            torch: bool = True, min_sample_s: float = timing.MIN_SAMPLE_S,
            only: tuple[str, ...] | None = None, on_round=None, method: str = ISOLATED,
            pool: Pool | None = None, calls_per_block: int | None = None) -> Result:
    """Time one case once: build and warm up, pick the calls per block, then ``rounds``
    interleaved rounds. ``only`` keeps a subset of the contenders (the ceiling always
    stays). Isolated cases run in ``pool``'s workers (a pool of its own if None)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    chosen = _chosen(name, backend, torch, only)
    result = _empty_result(name, size, dtype, backend, method, chosen)
    skip = _skip_reason(result, _registry.lookup(name))
    if skip:
        result.notes.append(skip)
        return result
    if method == SAME_PROCESS:
        run = _measure_same_process(result, chosen, rounds, seed, torch, calls_per_block,
                                    min_sample_s, on_round)
    elif pool is None:
        with Pool() as own:
            run = _measure_isolated(result, chosen, own, rounds, seed, calls_per_block,
                                    min_sample_s, on_round)
    else:
        run = _measure_isolated(result, chosen, pool, rounds, seed, calls_per_block,
                                min_sample_s, on_round)
    if run is not None:
        result.runs.append(run)
    return result


def probe(backend: str, method: str, pool: Pool | None = None,
          min_sample_s: float = timing.MIN_SAMPLE_S) -> float | None:
    """GB/s of the drift probe (the ceiling alone), or None if it could not run."""
    r = measure(PROBE_OPTIMIZER, PROBE_SIZE[backend], PROBE_DTYPE, backend, PROBE_ROUNDS,
                torch=False, only=(cs.CEILING,), method=method, pool=pool,
                min_sample_s=min_sample_s)
    return r.gb_per_s(cs.CEILING) if cs.CEILING in r.names else None


def probe_name(backend: str) -> str:
    return (f"traffic ceiling of {PROBE_OPTIMIZER} {PROBE_DTYPE} bytes at "
            f"2^{PROBE_SIZE[backend].bit_length() - 1} elements")


def _load() -> dict:
    try:
        return dict(zip(("1min", "5min", "15min"), os.getloadavg()))
    except OSError:
        return {}


def run(settings: Settings, console=None, progress: bool = True) -> Outcome:
    """Every case of ``settings``, ``repeats_of_sweep`` times, with the drift probe at the
    start and the end, and a rich progress bar (one tick per round)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cases = [(o, d, n) for o in settings.optimizers for d in settings.dtypes
             for n in settings.sizes]
    merged: dict[tuple, Result] = {}
    outcome = Outcome(settings, [], load_average={"start": _load()})
    watch = Watch()  # before any worker starts: their CPU time is the run's own
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    total = len(cases) * settings.rounds * settings.repeats_of_sweep
    with Pool() as pool, Progress(*columns, console=console, transient=True,
                                  disable=not progress) as bar:
        task = bar.add_task("benchmark", total=total)
        start = (probe(settings.backend, settings.method, pool, settings.min_sample_s)
                 if settings.probe else None)
        for repeat in range(settings.repeats_of_sweep):
            for o, d, n in cases:
                bar.update(task, description=f"sweep {repeat + 1}/{settings.repeats_of_sweep}"
                                             f" {o} {d} n={n:,}")
                one = measure(o, n, d, settings.backend, settings.rounds, settings.seed,
                              settings.torch, settings.min_sample_s, settings.contenders,
                              on_round=lambda: bar.advance(task), method=settings.method,
                              pool=pool, calls_per_block=settings.calls_per_block)
                if (o, d, n) in merged:
                    merged[o, d, n].merge(one)
                else:
                    merged[o, d, n] = one
        end = (probe(settings.backend, settings.method, pool, settings.min_sample_s)
               if settings.probe else None)
        if start and end:
            outcome.drift = Drift(probe_name(settings.backend), start, end)
        outcome.processes = (pool.describe() if settings.method == ISOLATED
                             else {"this process": describe_process()})
    outcome.results = [merged[k] for k in cases]
    outcome.load_average["end"] = _load()
    outcome.contention = watch.verdict(outcome.drift)  # the workers are reaped by now
    for result in outcome.results:
        result.busy = outcome.contention.busy
    return outcome
