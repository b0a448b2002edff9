"""GPU bandwidth of one optimizer step: fused kernel vs unfused CuPy vs torch vs a copy.

    python benchmarks/bench_gpu.py [--optimizer adam] [--dtype float32] [--sizes 2^20,2^24]

For each size it times, with CUDA events (medians of interleaved samples), one step of the
fused CUDA backend, the same step as unfused CuPy array expressions (backend="unfused"),
``torch.optim.Adam/AdamW(fused=True)`` for adam and adamw, and a device-to-device copy
moving the same number of bytes, and prints GB/s, the fraction of the copy's bandwidth and
the kernel launches per step:

    read_bytes  = 2 * param_bytes + n_slots * state_bytes   (param, grad, each state slot)
    write_bytes =     param_bytes + n_slots * state_bytes   (param, each state slot)
    bytes       = n * (read_bytes + write_bytes)            (fp32 Adam: 28 bytes an element)
    GB/s        = bytes / seconds / 1e9

The unfused form moves more than ``bytes`` (its temporaries); it is charged the same bytes,
so its figure reads as "effective" bandwidth. The copy is the practical ceiling. The code
is fusedopt.tools.gpucheck's (``make gpu-check`` runs it over every case in one call).
Needs CuPy and a CUDA device.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--sizes", default="2^20,2^22,2^24,2^26",
                        help="comma-separated element counts (65536, 2^16)")
    args = parser.parse_args(argv)
    from fusedopt.tools.cli import element_count
    from fusedopt.tools.gpucheck.probe import EXIT_NO_GPU, gpu_status, no_gpu_message

    sizes = [element_count(s) for s in args.sizes.split(",")]
    ok, why, device = gpu_status()
    if not ok:
        print(f"bench_gpu needs CuPy and a CUDA device. {no_gpu_message(why)}", file=sys.stderr)
        return EXIT_NO_GPU
    from fusedopt.tools.gpucheck import bench, report
    from fusedopt.tools.gpucheck.run import _torch_cuda

    torch_ok, torch_why = _torch_cuda()
    print(f"{device['name']}, {args.optimizer} {args.dtype}; {torch_why}\n")
    cases = [bench.case(args.optimizer, [n], args.dtype, torch_ok, f"{n:,}") for n in sizes]
    print("\n".join(report.bench_table(cases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
