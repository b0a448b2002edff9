"""Denormals are kept, not flushed to zero, on every backend (fusedopt/config.py says why).

A grad of 1e-20 in float32 has the square 1e-40, below float32's smallest normal number
(1.2e-38): a subnormal. Flushed to zero, Adam's second moment would be 0 and, with a small
epsilon, its step inf or NaN; kept, the step is what the float64 reference says, within the
precision a subnormal still has. NVRTC is told ``--ftz=false`` (its default, pinned), and
its PTX is checked for flushing instructions; the CPU backend (Numba), the unfused backend
(NumPy) and the host build of the CUDA kernels (g++ without fast-math) are run on such grads.
"""

import hashlib
import re

import error_bounds
import numpy as np
import pytest
from cuda_host import build
from tolerances import BOUND_FACTOR

from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import launch, nvrtc, source

#: |g| such that g*g is subnormal with at least ~16 significant bits left.
TINY = {"float32": (1e-20, 7e-20), "float64": (1e-156, 1e-154)}

#: Optimizers whose step divides by the root of g*g: with epsilon 0 a flushed square is
#: 0 / 0 or g / 0. (name, hyperparameters, slot holding the plain square of g).
CASES = [
    ("adam", dict(learning_rate=0.01, beta_2=0.0, epsilon=0.0), "v"),
    ("rmsprop", dict(learning_rate=0.01, rho=0.0, epsilon=0.0), "velocity"),
    ("adagrad", dict(learning_rate=0.01, initial_accumulator_value=0.0, epsilon=0.0),
     "accumulator"),
    # Ftrl divides by the accumulator's power: a flushed square makes 0 / 0 at step 1.
    ("ftrl", dict(learning_rate=0.01, initial_accumulator_value=0.0), "accumulator"),
    ("ftrl", dict(learning_rate=0.01, initial_accumulator_value=0.0, learning_rate_power=-0.3),
     "accumulator"),
]


def test_nvrtc_options_pin_ieee_denormals_and_rounding():
    """The runtime (cupy.RawModule's options) and the compile gate use the same pinned list."""
    for option in ("--ftz=false", "--prec-div=true", "--prec-sqrt=true"):
        assert option in config.NVRTC_OPTIONS
        assert option in source.options()
        assert option in nvrtc.gate_options("sm_80")
    assert not any("fast-math" in o or "ftz=true" in o for o in config.NVRTC_OPTIONS)


def _ptx(family: str, names, options, cache_dir) -> str:
    """NVRTC's PTX for ``names`` of kernels/<family>.cu (a virtual architecture: PTX, no
    cubin)."""
    pytest.importorskip("cuda.bindings.nvrtc",
                        reason="the CUDA gates need cuda-bindings: pip install fusedopt[cudacheck]")
    from cuda.bindings import nvrtc as N
    text = source.source(family)
    options = [*options, *(f"-I{folder}" for folder in source.include_dirs()),
               "--gpu-architecture=compute_80"]
    key = hashlib.sha256("\0".join([nvrtc.nvrtc_version(), text, *names, *options]).encode())
    cached = cache_dir / "ptx" / f"{family}-{key.hexdigest()[:24]}.ptx"
    if cached.is_file():
        return cached.read_text()
    err, prog = N.nvrtcCreateProgram(text.encode(), f"{family}.cu".encode(), 0, [], [])
    try:
        for name in names:
            N.nvrtcAddNameExpression(prog, name.encode())
        encoded = [o.encode() for o in options]
        (result,) = N.nvrtcCompileProgram(prog, len(encoded), encoded)
        assert result == N.nvrtcResult.NVRTC_SUCCESS, f"{family}.cu does not compile to PTX"
        _, size = N.nvrtcGetPTXSize(prog)
        buffer = b" " * size
        N.nvrtcGetPTX(prog, buffer)
    finally:
        N.nvrtcDestroyProgram(prog)
    ptx = buffer.rstrip(b"\0").decode()
    cached.parent.mkdir(parents=True, exist_ok=True)
    nvrtc.write_atomically(cached, ptx.encode())
    return ptx


_FLOAT_OP = re.compile(r"\b([a-z]+(?:\.[a-z0-9]+)*\.f32)\b")


def _float32_ops(ptx: str) -> set[str]:
    return set(_FLOAT_OP.findall(ptx))


#: CUDA's powf (the rule language's power() on float32, Ftrl's) takes one reciprocal with
#: flush-to-zero: of 1 + m, m its argument's mantissa reduced from the bits to
#: [sqrt(1/2), sqrt(2)) (a subnormal argument is scaled by 2^24 first), so an operand in
#: [1.7, 2.5) and a result in (0.4, 0.6): never subnormal, the flush can never act. The gate
#: admits that instruction only where the PTX shows its operand made so, step by step.
_POWF_RECIPROCAL = "rcp.approx.ftz.f32"
_INSTRUCTION = re.compile(r"^\s*([a-z][\w.]*)\s+(%\w+)((?:,\s*[^,;]+)*);")
#: operand = 1 + m;  m = bits(x - (x - bits(sqrt(1/2)) & exponent mask))
_REDUCED = (("add.f32", 1, "0f3F800000"), ("mov.b32", None, None), ("sub.s32", 1, None),
            ("and.b32", 1, "-8388608"), ("add.s32", 1, "-1060439283"))


def _definition(lines, i, register):
    """The instruction before line ``i`` (within its entry) that writes ``register``."""
    for line in reversed(lines[:i]):
        if ".entry" in line:
            return None
        m = _INSTRUCTION.match(line)
        if m and m.group(2) == register:
            return m.group(1), [a.strip() for a in m.group(3).split(",")[1:]]
    return None


def _flushes_outside_powf(ptx: str) -> list[str]:
    """The float32 flushing instructions of ``ptx`` other than powf's reciprocal of its
    reduced mantissa (above), each with its line."""
    lines, found = ptx.splitlines(), []
    for i, line in enumerate(lines):
        ops = {op for op in _FLOAT_OP.findall(line) if ".ftz" in op}
        if ops != {_POWF_RECIPROCAL} or not _reciprocal_of_reduced_mantissa(lines, i):
            found += [f"{op} at line {i + 1}: {line.strip()}" for op in sorted(ops)]
    return found


def _reciprocal_of_reduced_mantissa(lines, i) -> bool:
    m = _INSTRUCTION.match(lines[i])
    if not m:
        return False
    register, x = m.group(3).split(",")[1].strip(), None
    for op, index, constant in _REDUCED:
        made = _definition(lines, i, register)
        if made is None or made[0] != op or (constant and made[1][-1] != constant):
            return False
        if op == "sub.s32":
            x = made[1][0]
        if op == "add.s32" and made[1][0] != x:  # the same argument's bits both times
            return False
        register = made[1][0] if op != "sub.s32" else made[1][1]
    return True


OPTIMIZER_FAMILIES = sorted({spec.kernel for spec in REGISTRY.values() if spec.on_cuda}
                            | {spec.reduce_kernel for spec in REGISTRY.values()
                               if spec.reduce_kernel is not None})


@pytest.mark.parametrize("family", OPTIMIZER_FAMILIES)
def test_ptx_keeps_denormals_and_ieee_sqrt_and_division(family, nvrtc_compiled):
    """The PTX of the compile gate's own compile (every entry point, the runtime's options)."""
    compiled = nvrtc_compiled(family, config.GATE_FULL_ARCH)
    assert compiled.ok and compiled.ptx.count(".entry") == len(launch.name_expressions(family))
    ops = _float32_ops(compiled.ptx)
    assert ops, "no float32 instruction found: the check would pass vacuously"
    assert not _flushes_outside_powf(compiled.ptx), _flushes_outside_powf(compiled.ptx)[:5]
    assert not {op for op in ops if op.startswith(("sqrt.approx", "div.approx", "div.full"))}


def _probe_ptx(body: str, cuda_cache_dir) -> str:
    pytest.importorskip("cuda.bindings.nvrtc")
    text = ('extern "C" __global__ void k(const float* x, float* o, float q) '
            f"{{ int i = threadIdx.x; {body} }}")
    compiled = nvrtc.compile_source(text, ["k"], config.GATE_FULL_ARCH, filename="probe.cu",
                                    cache_dir=cuda_cache_dir / "nvrtc")
    assert compiled.ok, compiled.log
    return compiled.ptx


def test_powf_passes_and_any_other_flushing_reciprocal_does_not(cuda_cache_dir):
    """powf's own reciprocal is admitted, once the PTX shows its reduced operand; the same
    instruction on anything else, or powf's with its operand made otherwise, is refused."""
    powf = _probe_ptx("o[i] = powf(x[i], q);", cuda_cache_dir)
    assert _POWF_RECIPROCAL in powf and not _flushes_outside_powf(powf)
    other = _probe_ptx('float r; asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x[i] + q));'
                       " o[i] = r;", cuda_cache_dir)
    assert _flushes_outside_powf(other)
    planted = powf.replace("-1060439283", "-1060439284", 1)  # not sqrt(1/2)'s bits any more
    assert _flushes_outside_powf(planted)


def test_the_ptx_check_sees_flushing_when_it_is_asked_for(cuda_cache_dir):
    options = [o for o in source.options() if not o.startswith("--ftz")] + ["--ftz=true"]
    float32 = [n for n in launch.name_expressions("adam") if "<float, float, float, 0," in n]
    assert float32
    ops = _float32_ops(_ptx("adam", float32, options, cuda_cache_dir))
    assert {"add.ftz.f32", "mul.ftz.f32", "sqrt.rn.ftz.f32"} <= ops


def test_host_build_flags_have_no_fast_math():
    """-ffast-math links crtfastmath.o, which sets flush-to-zero for the whole process."""
    for flag in build.FLAGS:
        assert flag not in ("-ffast-math", "-Ofast", "-funsafe-math-optimizations")


def test_numpy_keeps_subnormal_squares_in_this_process():
    """The expected squares below are NumPy's: it must not flush either (a library built with
    fast-math, loaded into the process, would set flush-to-zero for all of it)."""
    g = np.float32(1e-20)
    assert g * g == np.float32(1e-40) and 0 < g * g < np.finfo(np.float32).tiny


def _problem(dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    low, high = TINY[dtype]
    magnitude = np.exp(rng.uniform(np.log(low), np.log(high), n))
    grads = [(magnitude * rng.choice([-1.0, 1.0], n)).astype(dtype) for _ in range(3)]
    assert (np.abs(grads[0].astype(np.float64)) ** 2 < np.finfo(dtype).tiny).all()
    return rng.standard_normal(n).astype(dtype), grads


@pytest.mark.parametrize("n", [1000, 200_000], ids=["one-task", "parallel-tasks"])
@pytest.mark.parametrize("backend", ["cpu", "unfused", "cuda"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, hp, square_slot", CASES,
                         ids=[c[0] + ("-power" if "learning_rate_power" in c[1] else "")
                              for c in CASES])
def test_tiny_grads_keep_their_subnormal_squares(request, name, hp, square_slot, dtype,
                                                 backend, n):
    if backend == "cuda":
        request.getfixturevalue("host_cuda")
    spec = REGISTRY[name]
    full = {**spec.defaults(), **hp}
    flags = spec.flags(full, "keras")
    p0, grads = _problem(dtype, n)
    p = p0.copy()
    states = [[np.full(p.shape, spec.slot_init(full), dtype) for _ in spec.slots(flags)]]
    import fusedopt
    for t, g in enumerate(grads[:1], start=1):
        fusedopt.functional.update(name, [p], [g], states, step=t, backend=backend, **hp)
    square = dict(zip(spec.slots(flags), states[0]))[square_slot]
    expected = grads[0] * grads[0]   # NumPy's subnormal squares (checked above not to flush)
    assert square.tobytes() == expected.tobytes(), "a subnormal square was flushed or rounded"
    for t, g in enumerate(grads[1:], start=2):
        fusedopt.functional.update(name, [p], [g], states, step=t, backend=backend, **hp)
    (result,) = error_bounds.run(name, "keras", full, [p0], [[g] for g in grads], dtype)
    value, bound = result.value, result.bound
    assert np.isfinite(bound).all() and np.isfinite(p).all()
    bad = error_bounds.outside(p, value, bound, BOUND_FACTOR[np.dtype(dtype).type])
    assert not bad.size, (f"{len(bad)} elements off the reference, e.g. {p.ravel()[bad[0]]!r} "
                          f"vs {value.ravel()[bad[0]]!r} (bound {bound.ravel()[bad[0]]:.3g})")
