"""One Adam step, timed back to back in one process: fusedopt.torch.Adam or
torch.optim.Adam(fused=True) on one float32 tensor. The environment chooses the rest
(``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``NUMBA_NUM_THREADS``, ...), so a wait policy or
thread count is compared by running it once per setting:

    python benchmarks/cpu_step_probe.py fusedopt 1048576 200
    GOMP_SPINCOUNT=1000 python benchmarks/cpu_step_probe.py fusedopt 1048576 200
    python benchmarks/cpu_step_probe.py torch 1024 2000

Prints the median and quartiles of the step, in us.
"""

import sys
import time

which, n = sys.argv[1], int(sys.argv[2])
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
if which == "fusedopt":
    import fusedopt.torch as ft
import torch  # noqa: E402

p = torch.zeros(n, requires_grad=True)
p.grad = torch.randn(n)
opt = ft.Adam([p], lr=1e-3) if which == "fusedopt" else torch.optim.Adam([p], lr=1e-3, fused=True)
for _ in range(50):
    opt.step()
ts = []
for _ in range(reps):
    t = time.perf_counter()
    opt.step()
    ts.append(time.perf_counter() - t)
ts.sort()
print(f"{which} {n}: median {ts[len(ts) // 2] * 1e6:.1f} us, quartiles "
      f"{ts[len(ts) // 4] * 1e6:.1f}-{ts[3 * len(ts) // 4] * 1e6:.1f}")
