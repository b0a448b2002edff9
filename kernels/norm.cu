// Per-tensor sums of squares of the grads, the first pass of clipping by norm
// (fusedopt/_clip.py). Two launches over the optimizer's own launch table (common.cuh),
// deterministic and without atomics:
//   chunk_sums<T>   one block per work item: partial[b] = sum of g^2 over block b's chunk
//   tensor_sums     one block per tensor: out[t] = sum of partial[b] over t's work items,
//                   found by binary search (work items are sorted by tensor)
// Sums are accumulated in double: a norm over 10^9 float32 squares keeps its digits.
// The block reduction is a shared-memory tree over blockDim.x, a power of two <= MAX_THREADS.
#include "common.cuh"

namespace fusedopt {

constexpr int MAX_THREADS = 1024;

// Rows of a table whose slot count is only known at run time.
struct Rows {
    const long long* table;
    int n_tensors, n_slots;

    FUSEDOPT_DEVICE long long grad(int t) const { return table[n_tensors + t]; }
    FUSEDOPT_DEVICE long long size(int t) const { return table[(2 + n_slots) * n_tensors + t]; }
    FUSEDOPT_DEVICE const long long* work() const { return table + (5 + n_slots) * n_tensors; }
};

// Sum of every thread's v, in a fixed order; the result is valid in thread 0.
FUSEDOPT_DEVICE double block_sum(double v) {
    __shared__ double buf[MAX_THREADS];
    const int tid = threadIdx.x;
    buf[tid] = v;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half) buf[tid] += buf[tid + half];
        __syncthreads();
    }
    return buf[0];
}

// First index in sorted work[0, n) whose value is >= key.
FUSEDOPT_DEVICE long long lower_bound(const long long* work, long long n, long long key) {
    long long lo = 0, hi = n;
    while (lo < hi) {
        const long long mid = lo + (hi - lo) / 2;
        if (work[mid] < key) lo = mid + 1; else hi = mid;
    }
    return lo;
}

}  // namespace fusedopt

template <typename T>
__global__ void chunk_sums(const long long* __restrict__ table, int n_tensors, int n_slots,
                           long long chunk, double* __restrict__ partial) {
    constexpr int VEC = fusedopt::VecWidth<T>::value;
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
            using Vec = fusedopt::Pack<T, VEC>;
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
    const double total = fusedopt::block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void tensor_sums(const long long* __restrict__ table, int n_tensors, int n_slots,
                            long long n_work, const double* __restrict__ partial,
                            double* __restrict__ out) {
    const fusedopt::Rows rows{table, n_tensors, n_slots};
    const long long t = blockIdx.x;
    const long long lo = fusedopt::lower_bound(rows.work(), n_work, t << 32);
    const long long hi = fusedopt::lower_bound(rows.work(), n_work, (t + 1) << 32);
    double acc = 0.0;
    for (long long b = lo + threadIdx.x; b < hi; b += blockDim.x) acc += partial[b];
    const double total = fusedopt::block_sum(acc);
    if (threadIdx.x == 0) out[t] = total;
}
