"""The benchmark phases of ``gpucheck``: single tensors over a size sweep, the 200-tensor
mix, and every registered optimizer at one size. Each case is a dict ready for the report;
a failing contender or case records its error and the phase carries on."""

from __future__ import annotations

import gc
import traceback

from . import steps
from .counting import device_launches, fusedopt_launches
from .timing import EventClock, Timed, interleave

#: Single-tensor sweep: 2^20 ... 2^28 elements, every SIZE_STEP-th power of two.
SIZE_EXPONENTS = range(20, 29, 2)
#: The family table's size.
FAMILY_SIZE = 2**26
#: Share of free device memory a case may use.
MEMORY_SHARE = 0.8
#: Seconds added to every case's estimate (allocation, warm-up, launch counting).
CASE_OVERHEAD_S = 2.0


def _error(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _free_memory() -> int:
    import cupy
    cupy.get_default_memory_pool().free_all_blocks()
    try:
        import torch
        torch.cuda.empty_cache()
    except Exception:
        pass
    return int(cupy.cuda.Device().mem_info[0])


def _sync():
    import cupy
    cupy.cuda.Device().synchronize()


def _measure(builders: dict, n_bytes: int, copy_bytes: int) -> dict:
    """Build, warm, count launches and time every contender; name -> row (or error)."""
    import cupy

    rows, timed = {}, []
    for name, (build, kind) in builders.items():
        try:
            step = build()
            t = Timed(name, step, EventClock(kind))
            t.warm()
            rows[name] = {"calls_per_sample": t.calls}
            if name in (steps.FUSED, steps.UNFUSED):
                rows[name]["launches_fusedopt"] = fusedopt_launches(step, _sync)
            try:
                rows[name]["launches_device"] = device_launches(step, _sync)
            except Exception as error:  # no profiler support: counts stay unknown
                rows[name]["launches_device_error"] = _error(error)
            timed.append(t)
        except Exception as error:
            rows[name] = {"error": _error(error), "traceback": traceback.format_exc(limit=4)}
    interleave(timed)
    copy = next((t for t in timed if t.name == steps.COPY), None)
    for t in timed:
        moved = copy_bytes if t.name == steps.COPY else n_bytes
        gbs = moved / t.median / 1e9
        rows[t.name].update(median_s=t.median, samples_s=t.samples, gb_per_s=gbs)
        if copy is not None:
            rows[t.name]["fraction_of_copy"] = gbs / (copy_bytes / copy.median / 1e9)
    del timed
    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()
    return rows


def _builders(optimizer: str, sizes, dtype: str, torch_ok: bool, n_bytes: int) -> dict:
    import cupy

    def fused():
        p, g = steps.arrays(sizes, dtype, cupy)
        return steps.fusedopt_step(optimizer, p, g, "cuda")

    def unfused():
        p, g = steps.arrays(sizes, dtype, cupy)
        return steps.fusedopt_step(optimizer, p, g, "unfused")

    out = {steps.FUSED: (fused, "cupy"), steps.UNFUSED: (unfused, "cupy")}
    if torch_ok and optimizer in steps.TORCH_CLASSES:
        out[steps.TORCH_FUSED] = (lambda: steps.torch_step(optimizer, sizes, dtype), "torch")
    out[steps.COPY] = (lambda: steps.copy_step(n_bytes, cupy), "cupy")
    return out


def _need_bytes(sizes, dtype: str, n_bytes: int) -> int:
    """Device bytes of a case: four contenders' params, grads and two slots, unfused
    temporaries, and the copy's two buffers (a generous bound)."""
    return sum(sizes) * steps.numpy_dtype(dtype).itemsize * 4 * 4 + n_bytes


def case(optimizer: str, sizes, dtype: str, torch_ok: bool, label: str,
         only: tuple[str, ...] | None = None) -> dict:
    """One case: every contender (or ``only`` those) built, warmed, counted and timed."""
    n_bytes = steps.step_bytes(optimizer, sizes, dtype)
    out = {"optimizer": optimizer, "dtype": dtype, "case": label, "elements": sum(sizes),
           "tensors": len(sizes), "bytes_per_step": n_bytes}
    try:
        need, free = _need_bytes(sizes, dtype, n_bytes), _free_memory()
        if need > MEMORY_SHARE * free:
            out["skipped"] = f"needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
            return out
        builders = _builders(optimizer, sizes, dtype, torch_ok, n_bytes)
        if only is not None:
            builders = {k: v for k, v in builders.items() if k in only}
        out["contenders"] = _measure(builders, n_bytes, n_bytes)
    except Exception as error:
        out["error"] = _error(error)
        out["traceback"] = traceback.format_exc(limit=6)
    return out


def single_tensors(phase, torch_ok: bool, clock) -> list[dict]:
    """Adam and AdamW on one tensor per size, for every dtype the registry allows; sizes
    stop when the next one's estimate exceeds the phase's time left."""
    results = []
    for dtype in steps.bench_dtypes():
        last = None  # (size, seconds) of the latest case measured
        for e in SIZE_EXPONENTS:
            n = 2**e
            for optimizer in ("adam", "adamw"):
                estimate = CASE_OVERHEAD_S + (0 if last is None else last[1] * n / last[0])
                what = f"{optimizer} {dtype} 2^{e}"
                if not phase.allows(estimate):
                    phase.skip(what, estimate)
                    continue
                started = clock()
                results.append(case(optimizer, [n], dtype, torch_ok, f"2^{e}"))
                last = (n, clock() - started)
    return results


def multi_tensor(phase, torch_ok: bool) -> list[dict]:
    """The 200-tensor transformer-like mix (fusedopt/tools/bench/multitensor.py), Adam and AdamW."""
    from ..bench.multitensor import model_sizes

    sizes = model_sizes()
    out = []
    for optimizer in ("adam", "adamw"):
        if not phase.allows(CASE_OVERHEAD_S * 3):
            phase.skip(f"{optimizer} {len(sizes)} tensors")
            continue
        out.append(case(optimizer, sizes, "float32", torch_ok, f"{len(sizes)} tensors"))
    return out


def family(phase) -> list[dict]:
    """Every registered optimizer (default variant) at FAMILY_SIZE float32: fused against
    the copy of the same bytes."""
    from ...algorithms.registry import REGISTRY

    out = []
    for name in (n for n, spec in REGISTRY.items() if spec.on_cuda):
        if not phase.allows(CASE_OVERHEAD_S):
            phase.skip(f"{name} family row")
            continue
        out.append(case(name, [FAMILY_SIZE], "float32", False, "2^26",
                        only=(steps.FUSED, steps.COPY)))
    return out
