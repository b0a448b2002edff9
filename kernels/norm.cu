// The grad-only pre-pass: per-tensor sums of squares of the grads (clipping by norm,
// fusedopt/engine/clip.py) and whether any grad element is inf or NaN (loss scaling), in one
// read of the grads over the optimizer's own launch table (common.cuh). Like every
// fusedopt kernel, each thread owns its work - no shared memory, barriers or atomics -
// and the sums are formed in a fixed order, so they are the same every run:
//   chunk_sums<G>  one block per work item (B of them), L threads: partial[b * L + i] =
//                  sum of g^2, and partial[(B + b) * L + i] = sum of g - g (0, or NaN once
//                  an element is inf or NaN), over the elements thread i of block b visits
//   lane_sums      one block per tensor and kind (2T blocks), L threads: lanes[u * L + i] =
//                  sum of partial[..] over tensor u mod T's work items b (found by binary
//                  search: work items are sorted by tensor), squares for u < T
//   tensor_sums    one thread per tensor and kind: out[u] = the sum of lanes[u * L ...]
//   raise_flag     one thread: flags[slot] = (or_in ? flags[slot] : 0) | any out[T + t] NaN
// L is the block size of the first two launches (the same). Sums are kept in double: a
// norm over 10^9 float32 squares keeps its digits. The finiteness test is its own sum,
// not the sum of squares: that overflows for finite float64 grads above ~1e154.
#include "common.cuh"

namespace fusedopt {

// Rows of a table whose slot count is only known at run time.
struct Rows {
    const long long* table;
    long long n_tensors;  // 64-bit, so row * n_tensors + t cannot wrap past 2**31 entries
    int n_slots;

    FUSEDOPT_DEVICE long long grad(int t) const { return table[n_tensors + t]; }
    FUSEDOPT_DEVICE long long size(int t) const { return table[(2 + n_slots) * n_tensors + t]; }
    FUSEDOPT_DEVICE const long long* work() const { return table + (6 + n_slots) * n_tensors; }
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

template <typename G>
__global__ void chunk_sums(const long long* __restrict__ table, int n_tensors, int n_slots,
                           long long chunk, double* __restrict__ partial) {
    using GB = typename fusedopt::Storage<G>::bits;
    constexpr int VEC = fusedopt::VecWidth<sizeof(GB)>::value;
    using Vec = fusedopt::Pack<GB, VEC>;
    const fusedopt::Rows rows{table, n_tensors, n_slots};
    const long long work = rows.work()[blockIdx.x];
    const int t = static_cast<int>(work >> 32);
    const long long n = rows.size(t);
    const long long begin = (work & 0xffffffffLL) * chunk;
    const long long end = begin + chunk < n ? begin + chunk : n;
    const GB* g = reinterpret_cast<const GB*>(rows.grad(t));
    fusedopt::assume_global(g);

    double acc = 0.0, bad = 0.0;
    long long i = begin;
    if ((rows.grad(t) & 15) == 0) {
        const long long vec_end = begin + (end - begin) / VEC * VEC;
        for (long long j = begin + static_cast<long long>(threadIdx.x) * VEC; j < vec_end;
             j += static_cast<long long>(blockDim.x) * VEC) {
            const Vec gv = *reinterpret_cast<const Vec*>(g + j);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const double x = static_cast<double>(fusedopt::Storage<G>::load(gv.v[e]));
                acc += x * x;
                bad += x - x;
            }
        }
        i = vec_end;
    }
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) {
        const double x = static_cast<double>(fusedopt::Storage<G>::load(g[j]));
        acc += x * x;
        bad += x - x;
    }
    const long long lane = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    partial[lane] = acc;
    partial[static_cast<long long>(gridDim.x) * blockDim.x + lane] = bad;
}

__global__ void lane_sums(const long long* __restrict__ table, int n_tensors, int n_slots,
                          long long n_work, const double* __restrict__ partial,
                          double* __restrict__ lanes) {
    const fusedopt::Rows rows{table, n_tensors, n_slots};
    const long long u = blockIdx.x;  // tensor u for the squares, u - T for the NaN test
    const long long t = u < n_tensors ? u : u - n_tensors;
    const long long lo = fusedopt::lower_bound(rows.work(), n_work, t << 32);
    const long long hi = fusedopt::lower_bound(rows.work(), n_work, (t + 1) << 32);
    const long long lane_count = blockDim.x;
    const double* part = partial + (u < n_tensors ? 0 : n_work * lane_count);
    double acc = 0.0;
    for (long long b = lo; b < hi; ++b) acc += part[b * lane_count + threadIdx.x];
    lanes[u * lane_count + threadIdx.x] = acc;
}

__global__ void tensor_sums(int n_outputs, int lane_count, const double* __restrict__ lanes,
                            double* __restrict__ out) {
    const long long t = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= n_outputs) return;
    double acc = 0.0;
    for (int i = 0; i < lane_count; ++i) acc += lanes[t * lane_count + i];
    out[t] = acc;
}

// One thread: the step's flag from this group's NaN tests (out[T .. 2T) of tensor_sums),
// or'ed into the flag of earlier groups of the same step when or_in is set.
__global__ void raise_flag(int n_tensors, const double* __restrict__ sums, int* __restrict__ flags,
                           long long slot, int or_in) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int found = or_in ? flags[slot] : 0;
    for (int t = 0; t < n_tensors; ++t) {
        const double bad = sums[n_tensors + t];
        found |= bad != bad ? 1 : 0;
    }
    flags[slot] = found;
}
