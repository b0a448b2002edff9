"""Deliberately broken copies of real kernel source, for the "must fail" tests.

Each function takes a family's source text (fusedopt.backends.cuda.source.source) and returns it
with one defect. Nothing on disk changes. A pattern that no longer matches the source is an
error, not a silent pass: update the pattern together with kernels/common.cuh.
"""

from __future__ import annotations

from fusedopt.algorithms.registry import REGISTRY


def replace_once(text: str, old: str, new: str, why: str) -> str:
    if old not in text:
        raise AssertionError(f"cannot make the {why} probe: {old!r} is no longer in the "
                             "kernel source; update tests/cuda_host/probes.py")
    return text.replace(old, new, 1)


def syntax_error(text: str) -> str:
    """The first kernel's declaration made ungrammatical."""
    return replace_once(text, "__global__ void", "__global__ void void", "syntax error")


def warning(text: str) -> str:
    """A device function with a variable that is never used (NVRTC warning #177)."""
    return text + "\n__device__ int fusedopt_probe_unused() { int unused; return 0; }\n"


def scalar_loads(text: str) -> str:
    """Pack without its 16-byte alignment: the compiler can no longer emit 128-bit access."""
    return replace_once(text, "struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Pack",
                        "struct Pack", "scalar-load")


def read_past_end(text: str) -> str:
    """The scalar tail loop runs one element too far: reads and writes element ``end``."""
    return replace_once(text, "j < end;", "j <= end;", "read-past-end")


def ignore_alignment(text: str) -> str:
    """The vector loop taken even for misaligned operands: a 16-byte access at a 4-byte one."""
    return replace_once(text, "if (misaligned == 0)", "if (true)", "alignment")


def stack_kernel() -> tuple[str, str]:
    """(source, name) of a kernel whose array is indexed at run time: it lives on the stack."""
    code = ("__global__ void fusedopt_probe_stack(float* out, int i) {\n"
            "    float a[64];\n"
            "    for (int k = 0; k < 64; ++k) a[k] = out[k];\n"
            "    for (int k = 0; k < 64; ++k) a[(k * 37 + i) & 63] += a[k];\n"
            "    out[0] = a[i & 63];\n"
            "}\n")
    return code, "fusedopt_probe_stack"


def float32_entry() -> tuple[str, str]:
    """(family, name expression) of a float32 optimizer entry point, to run probes on."""
    spec = next(s for s in REGISTRY.values() if "float32" in s.dtypes)
    return spec.kernel, spec.entry("float32", spec.all_flags[0])


def drop_tail_store(text: str) -> str:
    """The scalar tail computes the update but never stores the param."""
    return replace_once(text, "        p[j] = pe;\n", "", "dropped-store")


def block_sums_kernel() -> tuple[str, str]:
    """(source, name) of a helper kernel with a shared-memory tree reduction per block."""
    code = ("template <typename T>\n"
            "__global__ void fusedopt_probe_block_sums(const T* x, long long n, double* out) {\n"
            "    __shared__ double buf[1024];\n"
            "    double acc = 0.0;\n"
            "    for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n;\n"
            "         i += static_cast<long long>(gridDim.x) * blockDim.x) acc += x[i];\n"
            "    buf[threadIdx.x] = acc;\n"
            "    __syncthreads();\n"
            "    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {\n"
            "        if (threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];\n"
            "        __syncthreads();\n"
            "    }\n"
            "    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];\n"
            "}\n")
    return code, "fusedopt_probe_block_sums<float>"


def divergent_barrier_kernel() -> tuple[str, str]:
    """(source, name) of a helper kernel whose even threads pass one barrier more than the
    odd ones (a __syncthreads in code that only some threads run)."""
    code = ("__global__ void fusedopt_probe_divergent_barrier(float* x) {\n"
            "    if (threadIdx.x % 2 == 0) {\n"
            "        x[threadIdx.x] += 1.0f;\n"
            "        __syncthreads();\n"
            "    }\n"
            "    x[threadIdx.x] += 1.0f;\n"
            "    __syncthreads();\n"
            "}\n")
    return code, "fusedopt_probe_divergent_barrier"


def half_warp_shuffle_kernel() -> tuple[str, str]:
    """(source, name) of a helper kernel that shuffles within half warps (width 16), which
    the host build does not run."""
    code = ("__global__ void fusedopt_probe_half_warp_shuffle(float* x) {\n"
            "    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1, 16);\n"
            "}\n")
    return code, "fusedopt_probe_half_warp_shuffle"
