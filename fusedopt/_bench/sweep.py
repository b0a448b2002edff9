"""The benchmark engine: a sweep of (optimizer, dtype, size) cases, each timed interleaved.

Reusable from scripts: ``measure(name, size, dtype, backend, repeats)`` times one case and
returns a :class:`Result`; ``run(settings)`` runs a whole sweep with a progress bar.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

from .. import _registry
from . import contenders as cs
from . import timing
from .machine import available_memory
from .traffic import Traffic, traffic

#: Default sweep: powers of two from 2**SIZE_LOW to 2**SIZE_HIGH, every SIZE_STEP-th.
SIZE_LOW, SIZE_STEP = 10, 2
SIZE_HIGH = {"cpu": 26, "cuda": 28}
#: --quick: few sizes, two optimizers, one dtype, few repeats (< 1 minute on 2 cores).
QUICK_SIZES = (2**10, 2**16, 2**20)
QUICK_OPTIMIZERS = ("adam", "sgd")
QUICK_REPEATS = 5
DEFAULT_REPEATS = 15
#: A case is skipped when its arrays would take more than this share of free memory.
MEMORY_SHARE = 0.7


def default_sizes(backend: str) -> tuple[int, ...]:
    return tuple(2**e for e in range(SIZE_LOW, SIZE_HIGH[backend] + 1, SIZE_STEP))


@dataclass
class Settings:
    optimizers: tuple[str, ...]
    sizes: tuple[int, ...]
    dtypes: tuple[str, ...]
    backend: str
    repeats: int = DEFAULT_REPEATS
    seed: int = 0
    torch: bool = True
    min_sample_s: float = timing.MIN_SAMPLE_S


@dataclass
class Result:
    optimizer: str
    size: int
    dtype: str
    backend: str
    traffic: Traffic
    inner: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.traffic.total(self.size)

    @property
    def names(self) -> list[str]:
        return [n for n in cs.ORDER if n in self.samples]

    def summary(self, name: str) -> timing.Summary:
        return timing.Summary.of(self.samples[name])

    def gb_per_s(self, name: str) -> float:
        return self.bytes / self.summary(name).median / 1e9

    def ratio(self, name: str, baseline: str) -> float | None:
        """baseline's median time over ``name``'s (> 1: ``name`` is faster), if both ran."""
        if name not in self.samples or baseline not in self.samples:
            return None
        return self.summary(baseline).median / self.summary(name).median

    def fraction_of_ceiling(self, name: str) -> float | None:
        """Share of the traffic ceiling's bandwidth ``name`` reaches (same bytes: a time ratio)."""
        return self.ratio(name, cs.CEILING)


def resolve_backend(requested: str) -> str:
    """'cpu' or 'cuda'; 'auto' picks CUDA when CuPy sees a device."""
    from .._info import cuda_status

    if requested == "auto":
        return "cuda" if cuda_status()[0] else "cpu"
    if requested == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise SystemExit(f"--backend cuda: {why}; use --backend cpu")
    elif requested != "cpu":
        raise SystemExit(f"--backend must be auto, cpu or cuda, got {requested!r}")
    return requested


def measure(name: str, size: int, dtype: str, backend: str, repeats: int, seed: int = 0,
            torch: bool = True, min_sample_s: float = timing.MIN_SAMPLE_S,
            only: tuple[str, ...] | None = None, on_round=None) -> Result:
    """Time one case: warm up, pick the calls per sample, then ``repeats`` interleaved rounds.

    ``only`` keeps a subset of the contenders (by name); the ceiling is always kept.
    """
    spec = _registry.lookup(name)
    result = Result(spec.name, size, dtype, backend,
                    traffic(spec, spec.flags(spec.defaults(), "keras"), dtype))
    need, free = cs.working_set(spec.name, size, dtype, torch), available_memory(backend)
    if backend == "cuda":
        need += result.bytes  # the copy bound's source and destination
    if free is not None and need > MEMORY_SHARE * free:
        result.notes.append(f"skipped: needs {need / 2**30:.1f} GiB, "
                            f"{free / 2**30:.1f} GiB free")
        return result
    if dtype not in spec.dtypes:
        result.notes.append(f"skipped: {spec.name} does not support {dtype}")
        return result
    case = cs.make_case(spec.name, size, dtype, backend, seed, torch)
    result.traffic, result.notes = case.traffic, case.notes
    chosen = [c for c in case.contenders
              if only is None or c.name in only or c.name == cs.CEILING]
    sync = timing.synchronizer(backend)
    kept, first = timing.warm_up(chosen, sync, result.notes)
    if kept:
        result.inner = timing.inner_calls(first, min_sample_s)
        result.samples = timing.interleave(kept, repeats, result.inner, sync, on_round)
    del case, chosen, kept
    gc.collect()
    return result


def run(settings: Settings, console=None) -> list[Result]:
    """Every case of ``settings``, with a rich progress bar (one tick per round)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    cases = [(o, d, n) for o in settings.optimizers for d in settings.dtypes
             for n in settings.sizes]
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=len(cases) * settings.repeats)
        for o, d, n in cases:
            progress.update(task, description=f"{o} {d} n={n:,}")
            result = measure(o, n, d, settings.backend, settings.repeats, settings.seed,
                             settings.torch, settings.min_sample_s,
                             on_round=lambda: progress.advance(task))
            done = len(results) + 1
            progress.update(task, completed=done * settings.repeats)
            results.append(result)
    return results
