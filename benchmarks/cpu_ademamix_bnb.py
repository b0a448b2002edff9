"""AdEMAMix's CPU step against bitsandbytes' 32-bit AdEMAMix: one contender per process.

    python benchmarks/cpu_ademamix_bnb.py fused|bnb

Prints the median of 15 timed steps (after 3 untimed) of one 2^24-element float32 param
(torch tensors, CPU). Run the two alternately, each in its own process, under
``flock -x /tmp/fusedopt-quiet.lock`` (benchmarks/RESULTS.md gives the loop). ``fusedopt
bench`` has no bitsandbytes contender; this is its stand-in for that one peer.
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
        opt = fusedopt.torch.AdEMAMix([p], lr=1e-3)
    else:
        import bitsandbytes as bnb
        opt = bnb.optim.AdEMAMix([p], lr=1e-3)
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
