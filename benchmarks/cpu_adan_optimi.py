"""Adan's CPU step against torch-optimi's Adan on its fastest CPU path (foreach): one
contender per process.

    python benchmarks/cpu_adan_optimi.py fused|optimi

Prints the median of 15 timed steps (after 3 untimed) of one 2^24-element float32 param
(torch tensors, CPU). Run the two alternately, each in its own process, under
``flock -x /tmp/fusedopt-quiet.lock`` (benchmarks/RESULTS.md gives the loop). ``fusedopt
bench`` has torch.optim contenders only; this is its stand-in for optimi. optimi's other
CPU path is its for-loop (``foreach=False``), one tensor operation at a time: no faster
on one tensor; its Triton path needs a GPU.
"""

import sys
import time

import fusedopt.torch  # noqa: F401  (before torch: one OpenMP runtime for both)
import torch

N, WARM, TIMED = 1 << 24, 3, 15


def main(which: str) -> None:
    p = torch.nn.Parameter(torch.randn(N, generator=torch.Generator().manual_seed(0)))
    p.grad = torch.randn(N, generator=torch.Generator().manual_seed(1))
    if which == "fused":
        opt = fusedopt.torch.Adan([p], lr=1e-3)
    else:
        import optimi
        opt = optimi.Adan([p], lr=1e-3, foreach=True, triton=False)
    for _ in range(WARM):
        opt.step()
    times = []
    for _ in range(TIMED):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    times.sort()
    print(which, f"{times[len(times) // 2] * 1e3:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1])
