"""What each quantized kernel family (kernels/<family>_quantized.cu) costs the gates, cold:
NVRTC for sm_90 (every entry point) and sm_80 (the sample), the machine-code inspection of
the sm_90 cubin, the host g++ build of every entry point and the sanitizer build of the
sampled ones (tests/cuda_host). One process, one family after another, into an empty
cache; each figure is CPU seconds (this process's and its children's: g++, cuobjdump),
which a shared machine inflates less than wall time.

    python benchmarks/cuda_quantized_gate_cost.py [family_quantized ...]
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cuda_host import build  # noqa: E402

from fusedopt.backends.cuda import launch, nvrtc, sass  # noqa: E402

PHASES = ("nvrtc sm_90", "nvrtc sm_80", "sass", "host", "host asan")


def cpu_seconds() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(family: str, root: Path) -> list[float]:
    """CPU seconds of each of :data:`PHASES` for ``family``, cold (``root`` empty)."""
    spent, last = [], cpu_seconds()

    def lap():
        nonlocal last
        now = cpu_seconds()
        spent.append(now - last)
        last = now
    compiled = nvrtc.compile_family(family, "sm_90", cache_dir=root / "nvrtc")
    lap()
    nvrtc.compile_family(family, "sm_80", cache_dir=root / "nvrtc")
    lap()
    sass.inspect(compiled, root / "sass")
    lap()
    build.build_family(family, root / "host")
    lap()
    build.build_family(family, root / "host", sanitize=True,
                       name_expressions=launch.sampled_entry_points()[family])
    lap()
    return spent


def main(argv=None) -> int:
    families = list(argv if argv is not None else sys.argv[1:]) or [
        f for f in launch.all_entry_points() if f.endswith("_quantized")]
    root = Path(tempfile.mkdtemp(prefix="quantized-gate-cost-"))
    start = time.perf_counter()
    print("family", "entries sm_90", "entries sm_80", *PHASES, sep=" | ")
    others = [0.0] * len(PHASES)
    for family in families:
        spent = measure(family, root)
        if family != "adam_quantized":
            others = [a + b for a, b in zip(others, spent)]
        print(family, len(nvrtc.gate_names(family, "sm_90")),
              len(nvrtc.gate_names(family, "sm_80")), *(f"{s:.1f}" for s in spent),
              sep=" | ", flush=True)
    print("families but Adam's", "", "", *(f"{s:.1f}" for s in others), sep=" | ")
    print(f"CPU seconds, families but Adam's: {sum(others):.1f}; wall "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
