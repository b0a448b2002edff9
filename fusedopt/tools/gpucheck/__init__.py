"""``python3 -m fusedopt.tools.gpucheck`` (``make gpu-check``): everything a GPU machine can tell
about fusedopt, in one call, in under 8 minutes.

For a bare GPU machine with python3, CuPy, torch (CUDA), numba and pytest, and no network;
it creates no environment and installs nothing (``make gpu-check`` puts the checkout on
``PYTHONPATH``). In order, each phase within its share of the time budget
(:data:`.run.PLAN`), each failure recorded and the run carried on:

1. **single**: float32 (and every other storage type of at most 4 bytes the registry
   declares, e.g. bfloat16 once it does) Adam and AdamW steps on one tensor of 2^20 ...
   2^28 elements: fusedopt's fused kernel, the unfused CuPy expressions,
   ``torch.optim.Adam/AdamW(fused=True)`` and a device-to-device copy of the same bytes.
   CUDA events, medians of interleaved samples; GB/s, the fraction of copy bandwidth and
   kernel launches per step. Sizes stop when the next one would not fit the phase's time.
2. **multitensor**: the same contenders over the 200-tensor transformer-like mix.
3. **family**: every registered optimizer at 2^26 against the copy.
4. **tests**: the ``gpu``-marked tests (``python3 -m pytest -q -m gpu``), sharded over a
   few processes, output captured.

It writes ``report.md`` and ``report.json`` into ``$GPU_REPORT_DIR`` (default
``./gpu-report``). Exit codes: 0 the tests passed and every phase ran; 1 something failed
(see the report); 3 no GPU here (CuPy missing or no device: nothing run, no report).
"""

from .probe import EXIT_NO_GPU

__all__ = ["EXIT_NO_GPU"]
