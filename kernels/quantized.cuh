// Quantized optimizer state (state_dtype "q8" / "q4"; fusedopt/memory/quant.py): one pass per
// step over codes and block scales, no float copy of the state anywhere.
//
// A slot's buffer holds its param's blocks one after the other, each its float32 absmax then
// its codes (q8: 256 one-byte codes; q4: 128 four-bit codes, two to a byte, the even element
// in the low half); the last block as long as its elements need. value = map[code] * absmax.
//
// Work: a launch-table chunk starts on a block of its tensor (the chunk is a multiple of the
// block: fusedopt/backends/cuda/launch.py), and one warp owns one block at a time, each lane
// PER = BLOCK / 32 consecutive elements (q8: 8, q4: 4, so a q4 lane owns whole code bytes and
// no two lanes write one byte). A lane
//   1. reads each slot's absmax (the block's first word, the same for every lane) and its
//      codes, decoded through the slot's map into registers;
//   2. runs the rule on each element through fusedopt::Element, exactly as the float kernels
//      do (the param's load, the clip of the grad, the param's store);
//   3. takes each slot's largest |value| over its elements as the integer maximum of the
//      bits without the sign (NaN above inf: a NaN makes the absmax NaN, as on the CPU) and
//      the warp's maximum of those by shuffles: the block's new absmax, in every lane;
//   4. writes each code: the count of the map's nearest-rounding thresholds <= value /
//      absmax (a float32 division; 0 where the absmax is not positive), found by a
//      branchless binary search of the sorted table (8 steps for q8, 4 for q4). That is the
//      CPU's rule (fusedopt/backends/cpu/codes.py counts the same thresholds through a
//      lookup table), so the codes are the same bits; lane 0 writes the absmax.
//      STOCHASTIC: the entry below the value (the count of the entries after the first that
//      are <= it) or the one above, the upper with probability (value - below) / (above -
//      below), drawn as the CPU draws it: 24 bits of the element's bits for slot k
//      (array_bits(element_hash(base, i), 1 + k), kernels/random_bits.cuh), u = bits / 2^24,
//      up where u < that fraction.
// A variant without slots (SGD without momentum) runs the same loop over the param alone.
// A slot whose bit k is set in FLOATS (``Slot.float_state``: schedule-free's z and kept y)
// is float32 beside the codes, its address that of element 0 of its tensor: step 1 reads
// element i as it is, step 4 writes it back as it is, and it takes no part in the absmax
// (no shuffle), as on the CPU (fusedopt/backends/cpu/quantized.py). FLOATS is a constant
// of the entry point, so a kernel without such a slot (FLOATS 0) is the code it was.
// Every warp of a block runs the same number of rounds (a warp without a block in the last
// round reads and writes nothing but still takes part in the shuffles), so the host build,
// whose shuffles are barriers of the whole block (tests/cuda_host/shim.h), runs the same code.
//
// The maps: a kernel argument, per slot its ascending entries, its thresholds and its
// entries after the first (float32, LEVELS each, the last two padded with +inf; fusedopt/backends/cuda/quantized.py's map_tables). Any ascending map
// works with the source unchanged; 2 KB per q8 slot stay in L1 after the first warp reads
// them (constant memory would serialize the lanes' different addresses).
#pragma once

#include "common.cuh"

namespace fusedopt {

struct Q8 {
    static constexpr int BITS = 8;
    static constexpr int BLOCK = 256;
};
struct Q4 {
    static constexpr int BITS = 4;
    static constexpr int BLOCK = 128;
};

template <typename F>
struct QuantFormat {
    static constexpr int BITS = F::BITS;
    static constexpr int BLOCK = F::BLOCK;
    static constexpr int LEVELS = 1 << BITS;
    static constexpr int LANES = 32;
    static constexpr int PER = BLOCK / LANES;                // elements of one lane
    static constexpr int RECORD = 4 + BLOCK * BITS / 8;      // bytes of a full block
    static_assert(PER * LANES == BLOCK && PER * BITS % 8 == 0, "a lane owns whole bytes");
};

// The largest of the warp's ``value``s, in every lane (unsigned: order-free and exact).
FUSEDOPT_DEVICE unsigned int warp_max(unsigned int value) {
#pragma unroll
    for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
        const unsigned int other = __shfl_xor_sync(0xffffffffu, value, lane_mask);
        value = other > value ? other : value;
    }
    return value;
}

// The count of ``table``'s first LEVELS - 1 entries (ascending) that are <= x: for the
// thresholds, x's nearest code. A NaN compares false everywhere: 0, as on the CPU.
template <int LEVELS>
FUSEDOPT_DEVICE unsigned int count_at_most(const float* table, float x) {
    unsigned int c = 0;
#pragma unroll
    for (int step = LEVELS / 2; step > 0; step >>= 1) {
        c += x >= __ldg(table + c + step - 1) ? static_cast<unsigned int>(step) : 0u;
    }
    return c;
}

// x's code rounded stochastically with the random word r (``values``: the map, ``above``:
// its entries after the first).
template <int LEVELS>
FUSEDOPT_DEVICE unsigned int stochastic_code(const float* values, const float* above, float x,
                                             unsigned int r) {
    const unsigned int c = count_at_most<LEVELS>(above, x);  // the entry at or below x
    const unsigned int up = c + 1 < LEVELS ? c + 1 : c;
    const float low = __ldg(values + c);
    const float gap = __ldg(values + up) - low;
    const float fraction = gap > 0.0f ? (x - low) / gap : 0.0f;
    const float u = static_cast<float>(r >> 8) * 5.9604644775390625e-8f;  // 2^-24
    return u < fraction ? up : c;
}

// ``word`` as if computed from ``input`` (kernels/common.cuh's after_word): what is made
// from it waits for ``input``. No instruction; the host build has nothing to order.
FUSEDOPT_DEVICE unsigned int held(unsigned int word, float input) {
#if defined(FUSEDOPT_HOST_BUILD)
    (void)input;
#else
    after_word(word, input);
#endif
    return word;
}

// The code of element ``i`` of a block whose codes start at ``codes``.
template <int BITS>
FUSEDOPT_DEVICE unsigned int code_at(const unsigned char* codes, int i) {
    if (BITS == 8) return codes[i];
    const unsigned int byte = codes[i >> 1];
    return (i & 1) ? byte >> 4 : byte & 15u;
}

template <typename P, typename G, typename F, int MODE, int NS, typename Rule,
          typename Extra = NoTensorScalars, int FLOATS = 0>
FUSEDOPT_DEVICE void apply_quantized_chunk(const long long* table, int n_tensors,
                                           long long chunk, const Steps<compute_t<P>>& steps,
                                           const float* maps, Extra extra = Extra()) {
    using C = compute_t<P>;
    using Q = QuantFormat<F>;
    using E = Element<P, G, float, MODE, NS>;
    using PB = typename E::PB;
    using GB = typename E::GB;
    using XB = typename E::XB;
    constexpr bool HAS_SLOT = HasSlot<MODE>::value;
    constexpr int N = NS + (HAS_SLOT ? 1 : 0);
    constexpr int NSA = E::NSA;
    constexpr int PER = Q::PER;
    static_assert(NS >= 0 && NS <= MAX_SLOTS, "at most MAX_SLOTS slots");

    if (steps.skipped()) return;  // the same for every thread of the block
    const TableView<N> view{table, n_tensors};
    const auto [t, begin, end] = view.chunk_of(blockIdx.x, chunk);
    const C scale = static_cast<C>(view.grad_scale(t));
    const C limit = static_cast<C>(view.grad_limit(t));
    const Rule rule = make_rule<Rule>(steps.row(t), extra, t);
    const unsigned int base = MODE == STOCHASTIC ? stream_base(view.stream(t), steps.step(t)) : 0u;

    PB* p = reinterpret_cast<PB*>(view.address(0, t));
    const GB* g = reinterpret_cast<const GB*>(view.address(1, t));
    XB* x = HAS_SLOT ? reinterpret_cast<XB*>(view.address(2 + NS, t)) : nullptr;
    unsigned char* s[NSA];
#pragma unroll
    for (int k = 0; k < NS; ++k) s[k] = reinterpret_cast<unsigned char*>(view.address(2 + k, t));
    assume_global(p);
    assume_global(g);
    for (int k = 0; k < NS; ++k) assume_global(s[k]);
    if (HAS_SLOT) assume_global(x);

    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int warp = static_cast<int>(threadIdx.x) >> 5;
    const int warps = static_cast<int>(blockDim.x) >> 5;
    const long long first = begin / Q::BLOCK;
    const long long blocks = (end - begin + Q::BLOCK - 1) / Q::BLOCK;
    const long long rounds = (blocks + warps - 1) / warps;
    for (long long r = 0; r < rounds; ++r) {
        const long long local = r * warps + warp;
        const long long b = first + local;
        const long long i0 = b * Q::BLOCK + lane * PER;
        const long long left = local < blocks ? end - i0 : 0;
        const int count = left <= 0 ? 0 : (left < PER ? static_cast<int>(left) : PER);
        float values[NSA][PER];
        unsigned int top[NSA];
#pragma unroll
        for (int k = 0; k < NS; ++k) {
            top[k] = 0u;
            if (count == 0) continue;
            if ((FLOATS >> k) & 1) {  // float32 beside the codes: element i as it is
                const float* f = reinterpret_cast<const float*>(s[k]) + i0;
#pragma unroll
                for (int e = 0; e < PER; ++e) {
                    if (e < count) values[k][e] = f[e];
                }
                continue;
            }
            const unsigned char* record = s[k] + b * Q::RECORD;
            const float absmax = *reinterpret_cast<const float*>(record);
            const float* map = maps + k * 3 * Q::LEVELS;
#pragma unroll
            for (int e = 0; e < PER; ++e) {
                if (e < count) {
                    values[k][e] = __ldg(map + code_at<Q::BITS>(record + 4, lane * PER + e)) * absmax;
                }
            }
        }
#pragma unroll
        for (int e = 0; e < PER; ++e) {
            if (e >= count) continue;
            const long long i = i0 + e;
            float se[NSA];
#pragma unroll
            for (int k = 0; k < NS; ++k) se[k] = values[k][e];
            PB pe = p[i];
            XB xe = HAS_SLOT ? x[i] : XB();
            E::run(rule, pe, g[i], se, xe, scale, limit, base, i);
            p[i] = pe;
            if (HAS_SLOT) x[i] = xe;
#pragma unroll
            for (int k = 0; k < NS; ++k) {
                values[k][e] = se[k];
                if ((FLOATS >> k) & 1) continue;
                const unsigned int bits = float_bits(se[k]) & 0x7fffffffu;
                top[k] = bits > top[k] ? bits : top[k];
            }
        }
#pragma unroll
        for (int k = 0; k < NS; ++k) {
            if ((FLOATS >> k) & 1) {  // written back as it is, no absmax
                if (count == 0) continue;
                float* f = reinterpret_cast<float*>(s[k]) + i0;
#pragma unroll
                for (int e = 0; e < PER; ++e) {
                    if (e < count) f[e] = values[k][e];
                }
                continue;
            }
            const float absmax = bits_float(warp_max(top[k]));
            if (count == 0) continue;
            unsigned char* record = s[k] + b * Q::RECORD;
            const float* map = maps + k * 3 * Q::LEVELS;
            const bool positive = absmax > 0.0f;  // not for 0 or NaN: every code that of 0
            unsigned char* out = record + 4 + lane * PER * Q::BITS / 8;
            constexpr int PAIR = 8 / Q::BITS;  // codes per byte
            // The elements' random bits made once the absmax is known, not hoisted above
            // the shuffles to be held (a register each) across them.
            const unsigned int key = MODE == STOCHASTIC ? held(base, absmax) : 0u;
#pragma unroll
            for (int j = 0; j < PER / PAIR; ++j) {  // each byte written once its codes are
                unsigned int byte = 0u;
#pragma unroll
                for (int h = 0; h < PAIR; ++h) {
                    const int e = j * PAIR + h;
                    if (e >= count) continue;
                    const float normal = positive ? values[k][e] / absmax : 0.0f;
                    unsigned int code;
                    if (MODE == STOCHASTIC) {
                        const unsigned int r = array_bits(element_hash(key, i0 + e), 1 + k);
                        code = stochastic_code<Q::LEVELS>(map, map + 2 * Q::LEVELS, normal, r);
                    } else {
                        code = count_at_most<Q::LEVELS>(map + Q::LEVELS, normal);
                    }
                    byte |= code << (h * Q::BITS);
                }
                if (j * PAIR < count) out[j] = static_cast<unsigned char>(byte);
            }
            if (lane == 0) *reinterpret_cast<float*>(record) = absmax;
        }
    }
}

}  // namespace fusedopt

// The parameters of a quantized optimizer kernel: those of every optimizer kernel, then the
// slots' map tables.
#define FUSEDOPT_QUANTIZED_PARAMS(P) \
    FUSEDOPT_OPTIMIZER_PARAMS(P), const float *__restrict__ maps

#define FUSEDOPT_APPLY_QUANTIZED(P, G, F, MODE, NS, ...)                                   \
    fusedopt::apply_quantized_chunk<P, G, F, MODE, NS, __VA_ARGS__>(                        \
        table, n_tensors, chunk,                                                            \
        fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors}, maps)

// FUSEDOPT_APPLY_QUANTIZED with the slots of bitmask FLOATS float32 beside the codes.
#define FUSEDOPT_APPLY_QUANTIZED_FLOATS(P, G, F, MODE, NS, FLOATS, ...)                    \
    fusedopt::apply_quantized_chunk<P, G, F, MODE, NS, __VA_ARGS__, fusedopt::NoTensorScalars, \
                                    FLOATS>(                                                \
        table, n_tensors, chunk,                                                            \
        fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors}, maps)
