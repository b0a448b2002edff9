"""The kernels under AddressSanitizer and UndefinedBehaviorSanitizer (tests/cuda_host/sanitize.py).

Every registered optimizer's kernels run in a subprocess with ASan preloaded, over the
awkward sizes, a misaligned view and small launch sizes; then two deliberately broken
copies of a kernel show the sanitizers do catch what they are here for.
"""

import subprocess

import pytest
from cuda_host import probes, sanitize

from fusedopt.backends.cuda import source

pytestmark = pytest.mark.skipif(sanitize.asan_runtime() is None,
                                reason="g++ has no AddressSanitizer runtime (libasan)")


def _run(cuda_cache_dir, tmp_path=None, text=None):
    """The sanitizer run; with ``text``, of just one float32 entry point built from it."""
    sources, entry = {}, None
    if text is not None:
        family, entry = probes.float32_entry()
        path = tmp_path / f"{family}.cu"
        path.write_text(text)
        sources[family] = path
    argv, env = sanitize.command(cuda_cache_dir, sources, entry)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def test_every_kernel_is_clean_under_the_sanitizers(cuda_cache_dir):
    result = _run(cuda_cache_dir)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sanitizers clean over" in result.stdout
    # Adafactor's factored moment: its factor phase, slice means, reduction and element pass.
    ran = result.stdout.split("kernels:", 1)[1].split()
    assert {"adafactor_factor", "adafactor_means", "adafactor_reduce", "adafactor"} <= set(ran)
    # Muon's two element passes, Newton-Schulz between them.
    assert {"muon_momentum", "muon_weight", "muon_momentum_quantized"} <= set(ran)
    # Quantized state, a float32 slot beside the codes among them (schedule-free's z and y).
    assert {"adam_quantized", "schedulefree_quantized"} <= set(ran)
    # LAMB's and StableAdamW's quantized reductions and the element passes that follow them.
    assert {f"{k}{part}_quantized" for k in ("lamb", "stableadamw")
            for part in ("", "_reduce")} <= set(ran)


def test_reading_past_the_end_is_caught(cuda_cache_dir, tmp_path):
    family, _ = probes.float32_entry()
    result = _run(cuda_cache_dir, tmp_path, probes.read_past_end(source.source(family)))
    assert result.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr[-4000:]


def test_a_misaligned_vector_access_is_caught(cuda_cache_dir, tmp_path):
    family, _ = probes.float32_entry()
    result = _run(cuda_cache_dir, tmp_path, probes.ignore_alignment(source.source(family)))
    assert result.returncode != 0
    assert "misaligned address" in result.stderr, result.stderr[-4000:]
