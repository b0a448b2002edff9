// Per-tensor sums of squares of the grads, the first pass of clipping by norm
// (fusedopt/_clip.py), over the optimizer's own launch table (common.cuh). Like every
// fusedopt kernel, each thread owns its work - no shared memory, barriers or atomics -
// and the sums are formed in a fixed order, so they are the same every run:
//   chunk_sums<T>  one block per work item, L threads: partial[b * L + i] = sum of g^2
//                  over the elements thread i of block b visits
//   lane_sums      one block per tensor, L threads: lanes[t * L + i] = sum of
//                  partial[b * L + i] over tensor t's work items b (found by binary
//                  search: work items are sorted by tensor)
//   tensor_sums    one thread per tensor: out[t] = lanes[t * L] + ... + lanes[t * L + L - 1]
// L is the block size of the first two launches (the same). Sums are kept in double: a
// norm over 10^9 float32 squares keeps its digits.
#include "common.cuh"

namespace fusedopt {

// Rows of a table whose slot count is only known at run time.
struct Rows {
    const long long* table;
    int n_tensors, n_slots;

    FUSEDOPT_DEVICE long long grad(int t) const { return table[n_tensors + t]; }
    FUSEDOPT_DEVICE long long size(int t) const { return table[(2 + n_slots) * n_tensors + t]; }
    FUSEDOPT_DEVICE const long long* work() const { return table + (5 + n_slots) * n_tensors; }
};

// First index in sorted work[0, n) whose value is >= key.
FUSEDOPT_DEVICE long long lower_bound(const long long* work, long long n, long long key) {
    long long lo = 0, hi = n;
    while (lo < hi) {
        const long long mid = lo + (hi - lo) / 2;
        if (work[mid] < key) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

}  // namespace fusedopt

template <typename T>
__global__ void chunk_sums(const long long* __restrict__ table, int n_tensors, int n_slots,
                           long long chunk, double* __restrict__ partial) {
    constexpr int VEC = fusedopt::VecWidth<T>::value;
    using Vec = fusedopt::Pack<T, VEC>;
    const fusedopt::Rows rows{table, n_tensors, n_slots};
    const long long work = rows.work()[blockIdx.x];
    const int t = static_cast<int>(work >> 32);
    const long long n = rows.size(t);
    const long long begin = (work & 0xffffffffLL) * chunk;
    const long long end = begin + chunk < n ? begin + chunk : n;
    const T* g = reinterpret_cast<const T*>(rows.grad(t));
    fusedopt::assume_global(g);

    double acc = 0.0;
    long long i = begin;
    if ((rows.grad(t) & 15) == 0) {
        const long long vec_end = begin + (end - begin) / VEC * VEC;
        for (long long j = begin + static_cast<long long>(threadIdx.x) * VEC; j < vec_end;
             j += static_cast<long long>(blockDim.x) * VEC) {
            const Vec gv = *reinterpret_cast<const Vec*>(g + j);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const double x = static_cast<double>(gv.v[e]);
                acc += x * x;
            }
        }
        i = vec_end;
    }
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) {
        const double x = static_cast<double>(g[j]);
        acc += x * x;
    }
    partial[static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x] = acc;
}

__global__ void lane_sums(const long long* __restrict__ table, int n_tensors, int n_slots,
                          long long n_work, const double* __restrict__ partial,
                          double* __restrict__ lanes) {
    const fusedopt::Rows rows{table, n_tensors, n_slots};
    const long long t = blockIdx.x;
    const long long lo = fusedopt::lower_bound(rows.work(), n_work, t << 32);
    const long long hi = fusedopt::lower_bound(rows.work(), n_work, (t + 1) << 32);
    const long long lane_count = blockDim.x;
    double acc = 0.0;
    for (long long b = lo; b < hi; ++b) acc += partial[b * lane_count + threadIdx.x];
    lanes[t * lane_count + threadIdx.x] = acc;
}

__global__ void tensor_sums(int n_tensors, int lane_count, const double* __restrict__ lanes,
                            double* __restrict__ out) {
    const long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= n_tensors) return;
    double acc = 0.0;
    for (int i = 0; i < lane_count; ++i) acc += lanes[t * lane_count + i];
    out[t] = acc;
}
