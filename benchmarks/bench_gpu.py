"""GPU bandwidth of one optimizer step: fused kernel vs unfused CuPy vs a device-to-device copy.

    python benchmarks/bench_gpu.py [--optimizer adam] [--dtype float32] [--sizes 1e6,1e7,1e8]

For each size it times, with CUDA events, one step of the fused CUDA backend, the same step
as unfused CuPy array expressions (backend="unfused"), and a device-to-device copy moving
the same number of bytes, and prints achieved bandwidth in GB/s:

    read_bytes  = 2 * param_bytes + n_slots * state_bytes   (param, grad, each state slot)
    write_bytes =     param_bytes + n_slots * state_bytes   (param, each state slot)
    bytes       = n * (read_bytes + write_bytes)            (fp32 Adam: 28 bytes an element)
    GB/s        = bytes / seconds / 1e9

The unfused form moves more than ``bytes`` (its temporaries); it is charged the same bytes,
so its figure reads as "effective" bandwidth. The copy is the practical ceiling.
Needs CuPy and a CUDA device.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

#: Untimed calls before timing (the first compiles the kernel and uploads the table).
WARMUP_CALLS = 3
#: Calls per timed sample, and samples per contender (the median is reported).
CALLS_PER_SAMPLE = 20
SAMPLES = 7


@dataclass(frozen=True)
class Traffic:
    read_bytes: int   # per element
    write_bytes: int  # per element

    def total(self, n: int) -> int:
        """``bytes = n * (read_bytes + write_bytes)``."""
        return n * (self.read_bytes + self.write_bytes)


def traffic(spec, flags, dtype: str) -> Traffic:
    """Bytes per element of one step; state is kept in the param's dtype (float32/float64)."""
    param = state = np.dtype(dtype).itemsize
    n_slots = len(spec.slots(flags))
    return Traffic(read_bytes=2 * param + n_slots * state, write_bytes=param + n_slots * state)


def time_per_call(step, cupy) -> float:
    """Median seconds per call of ``step`` over SAMPLES samples, timed with CUDA events."""
    for _ in range(WARMUP_CALLS):
        step()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    samples = []
    for _ in range(SAMPLES):
        start.record()
        for _ in range(CALLS_PER_SAMPLE):
            step()
        end.record()
        end.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, end) / 1e3 / CALLS_PER_SAMPLE)
    return float(np.median(samples))


def optimizer_step(name: str, n: int, dtype: str, backend: str, cupy):
    """A no-argument step of registered optimizer ``name`` on one CuPy tensor of ``n``."""
    import fusedopt
    from fusedopt._registry import lookup

    spec = lookup(name)
    hp = spec.defaults()
    convention = "keras"
    slots = spec.slots(spec.flags(hp, convention))
    param = cupy.ones(n, dtype=dtype)
    grad = cupy.full(n, 1e-3, dtype=dtype)
    states = [[cupy.full(n, spec.slot_init(hp), dtype=dtype) for _ in slots]]
    counter = {"t": 0}

    def step():
        counter["t"] += 1
        fusedopt.functional.update(name, [param], [grad], states, step=counter["t"],
                                   convention=convention, backend=backend)
    return step, traffic(spec, spec.flags(hp, convention), dtype)


def copy_step(n_bytes: int, cupy):
    """A device-to-device copy that moves ``n_bytes`` in all (half read, half written)."""
    src = cupy.zeros(n_bytes // 2, dtype=cupy.uint8)
    dst = cupy.empty_like(src)

    def step():
        dst.data.copy_from_device_async(src.data, src.nbytes)
    return step


def measure(name: str, dtype: str, sizes, cupy) -> list[dict]:
    rows = []
    for n in sizes:
        fused, moved = optimizer_step(name, n, dtype, "cuda", cupy)
        unfused, _ = optimizer_step(name, n, dtype, "unfused", cupy)
        n_bytes = moved.total(n)
        row = {"n": n, "bytes": n_bytes}
        for label, step in (("fused", fused), ("unfused", unfused),
                            ("copy", copy_step(n_bytes, cupy))):
            seconds = time_per_call(step, cupy)
            row[label] = n_bytes / seconds / 1e9
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--sizes", default="1e5,1e6,1e7,1e8",
                        help="comma-separated element counts (1e7 style accepted)")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    try:
        import cupy
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
    except Exception as error:  # no CuPy, no driver or no device
        print(f"bench_gpu needs CuPy and a CUDA device: {error}", file=sys.stderr)
        return 2
    print(f"{props['name'].decode()}, {args.optimizer} {args.dtype}, GB/s "
          "(bytes = n * (read_bytes + write_bytes), CUDA events, median of "
          f"{SAMPLES} x {CALLS_PER_SAMPLE} calls)")
    print(f"{'n':>12} {'bytes':>14} {'fused':>9} {'unfused':>9} {'copy':>9}")
    for row in measure(args.optimizer, args.dtype, sizes, cupy):
        print(f"{row['n']:>12} {row['bytes']:>14} {row['fused']:>9.1f} {row['unfused']:>9.1f} "
              f"{row['copy']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
