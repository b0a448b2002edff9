"""kernels/storage.cuh's helpers as host-built kernels, so tests can feed them bit patterns.

Each probe kernel applies one helper to an array, every thread striding over it; the text
is kernels/storage.cuh itself (with its local includes inlined, as NVRTC sees it) plus
these probes, built by tests/cuda_host/build.py and launched through the host runtime.
"""

from __future__ import annotations

from fusedopt.backends.cuda import source

_PROBES = r"""
#define FUSEDOPT_PROBE_LOOP(n) \
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; \
         i < (n); i += static_cast<long long>(gridDim.x) * blockDim.x)

template <typename T>
__global__ void probe_widen(const unsigned short* in, float* out, long long n) {
    FUSEDOPT_PROBE_LOOP(n) out[i] = fusedopt::Storage<T>::load(in[i]);
}

template <typename T, int R>
__global__ void probe_round(const float* in, unsigned short* out, long long n) {
    FUSEDOPT_PROBE_LOOP(n) out[i] = fusedopt::Storage<T>::template store<R>(in[i]);
}

template <typename T>
__global__ void probe_round_stochastic(const float* in, const unsigned int* bits,
                                       unsigned short* out, long long n) {
    FUSEDOPT_PROBE_LOOP(n) out[i] = fusedopt::Storage<T>::store_stochastic(in[i], bits[i]);
}

// The random words of elements [0, n) of a tensor with ``stream`` at ``step``, ``array``.
__global__ void probe_random_bits(long long stream, long long step, int array,
                                  unsigned int* out, long long n) {
    const unsigned int base = fusedopt::stream_base(stream, step);
    FUSEDOPT_PROBE_LOOP(n) out[i] = fusedopt::array_bits(fusedopt::element_hash(base, i), array);
}

__global__ void probe_split(const float* in, unsigned short* hi, short* remainder,
                            float* rebuilt, long long n) {
    FUSEDOPT_PROBE_LOOP(n) {
        const fusedopt::Split s = fusedopt::split_master(in[i]);
        hi[i] = s.hi;
        remainder[i] = s.remainder;
        rebuilt[i] = fusedopt::rebuild_master(s.hi, s.remainder);
    }
}
"""

TYPES = {"bfloat16": "__nv_bfloat16", "float16": "__half"}

NAMES = (*(f"probe_widen<{t}>" for t in TYPES.values()),
         *(f"probe_round<{t}, {r}>" for t in TYPES.values() for r in (0, 1)),
         *(f"probe_round_stochastic<{t}>" for t in TYPES.values()),
         "probe_random_bits", "probe_split")

#: Launch shape of every probe: each thread strides over the array.
GRID, BLOCK = (64,), (64,)


def text() -> str:
    """kernels/storage.cuh and kernels/random_bits.cuh (they include no local header), plus
    the probes."""
    folder = source.kernel_dir()
    return (folder / "storage.cuh").read_text() + (folder / "random_bits.cuh").read_text() + \
        _PROBES
