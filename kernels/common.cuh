// Shared pieces of every fusedopt kernel: the kernel ABI, the multi-tensor launch table,
// 128-bit vector access, weight-decay flavours and the one loop every optimizer runs.
//
// Every optimizer kernel is family<P, G, S, MODE, flags...>: P, G, S the storage types of
// the param, the grad and the state slots (float, double, __half, __nv_bfloat16), MODE how
// the param is kept and stored (PLAIN, MASTER, REMAINDER, KAHAN, STOCHASTIC below), then
// the variant flags. The math runs
// in compute_t<P> (float for float and the 16-bit types, double for double); values are
// widened on load and rounded once on store by kernels/storage.cuh.
//
// Launch table (one int64 buffer on the device, built by fusedopt/memory/table.py):
//   table[k * T + t]            address of operand k of tensor t; k = 0 param, 1 grad,
//                               2 .. 2+NS-1 the optimizer's state slots, then (MASTER or
//                               REMAINDER) the master slot: float32, or int16 remainders
//   table[(2 + N) * T + t]      element count of tensor t (N = every slot, master included)
//   table[(3 + N) * T + t]      grad scale of tensor t, a double's bits (1.0: none)
//   table[(4 + N) * T + t]      grad limit of tensor t, a double's bits (+inf: no clipvalue)
//   table[(5 + N) * T + t]      stream of tensor t: (seed << 32) | param position, the key
//                               of its random bits (STOCHASTIC; kernels/random_bits.cuh)
//   table[(6 + N) * T + b]      block b's work: (tensor << 32) | chunk index
// Block b updates elements [chunk * CHUNK, min((chunk + 1) * CHUNK, n)) of its tensor;
// its threads stride through that range, 128-bit vectors first, then a scalar tail.
// Every grad is clipped on load, g -> clamp(g * scale, -limit, limit), before the rule sees
// it: Keras' clipnorm / global_clipnorm and a loss scale's 1/s (a scale) and clipvalue (a
// limit), with no change to any optimizer's rule. Both are exact no-ops at 1.0 and +inf.
// The scalars (lr, wd, ... in the rule's order) come from device rows chosen per tensor by
// kernels/steps.cuh, which also skips a step whose grads were not finite.
#pragma once

#include "constants.cuh"
#include "storage.cuh"
#include "random_bits.cuh"
#include "steps.cuh"

namespace fusedopt {

// Storage type -> type the math runs in (PyTorch calls this opmath_t).
template <typename T> using compute_t = typename Storage<T>::compute;

// How the param is kept and stored (enum Mode, kernels/constants.cuh, generated from
// fusedopt/constants.py). PLAIN: the param itself, rounded once per step.
// MASTER: a float32 master in the last slot is updated and the param written from it
// (rounded to nearest, ties away). REMAINDER (bfloat16 params): the param and an int16
// remainder in the last slot are the float32 master, split and rebuilt exactly
// (kernels/storage.cuh). KAHAN (16-bit params): the last slot is a compensation in the
// param's type; the rule sees param + compensation, the result is rounded to nearest
// once and what that lost, rounded, goes back into the slot. STOCHASTIC: as PLAIN, but
// every 16-bit store (the param's, the state's) rounds stochastically, with bits keyed on
// the tensor's stream and step and the element's index (kernels/random_bits.cuh).

// Whether MODE keeps a slot after the optimizer's (the master slot).
template <int MODE> struct HasSlot { static constexpr bool value = MODE >= MASTER && MODE <= KAHAN; };

// The storage of the master slot of each mode (PLAIN and STOCHASTIC have none: a
// placeholder).
template <int MODE, typename P> struct MasterSlot { using type = float; };
template <typename P> struct MasterSlot<REMAINDER, P> { using type = short; };
template <typename P> struct MasterSlot<KAHAN, P> { using type = typename Storage<P>::bits; };

// The bits of a table entry as the double they hold.
FUSEDOPT_DEVICE double as_double(long long bits) {
#if defined(FUSEDOPT_HOST_BUILD)
    double d;
    __builtin_memcpy(&d, &bits, sizeof d);
    return d;
#else
    return __longlong_as_double(bits);
#endif
}

// g * scale clamped to [-limit, limit]; written with comparisons so a NaN passes through
// (as torch.clamp does) instead of being replaced by fmin/fmax.
template <typename C>
FUSEDOPT_DEVICE C clip_grad(C g, C scale, C limit) {
    const C x = g * scale;
    return x > limit ? limit : (x < -limit ? -limit : x);
}

template <typename T>
FUSEDOPT_DEVICE void assume_global(const T* ptr) {
    __builtin_assume(__isGlobal(ptr));
}

// N values of T moved as aligned 16-byte units: one 128-bit access per 16 bytes.
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Pack {
    T v[N];
};

// Elements per vector step: 16 bytes of the narrowest operand, so every operand moves in
// whole 128-bit accesses (8 elements when any operand is 16-bit: one access for it, two
// for a float32 one).
template <int BYTES>
struct VecWidth { static constexpr int value = 16 / BYTES; };

template <int A, int B>
struct Min { static constexpr int value = A < B ? A : B; };
template <int A, int B>
struct Max { static constexpr int value = A > B ? A : B; };

// ``value`` as if recomputed from ``input`` here: nothing that reads ``value`` can start
// before ``input`` is ready. No instruction is emitted. (The host build runs one thread at
// a time: it has nothing to order.)
#if defined(FUSEDOPT_HOST_BUILD)
template <typename C, typename T>
FUSEDOPT_DEVICE void after(C&, const T&) {}
template <typename C, typename T>
FUSEDOPT_DEVICE void after_pointer(const C*&, const T&) {}
#else
FUSEDOPT_DEVICE void after(float& value, unsigned short input) {
    asm volatile("" : "+f"(value) : "h"(input));
}
FUSEDOPT_DEVICE void after(float& value, float input) {
    asm volatile("" : "+f"(value) : "f"(input));
}
FUSEDOPT_DEVICE void after(double& value, double input) {
    asm volatile("" : "+d"(value) : "d"(input));
}
template <typename C>
FUSEDOPT_DEVICE void after_pointer(const C*& pointer, float input) {
    asm volatile("" : "+l"(pointer) : "f"(input));
}
template <typename C>
FUSEDOPT_DEVICE void after_pointer(const C*& pointer, double input) {
    asm volatile("" : "+l"(pointer) : "d"(input));
}
FUSEDOPT_DEVICE void after_word(unsigned int& word, float input) {
    asm volatile("" : "+r"(word) : "f"(input));
}
FUSEDOPT_DEVICE void after_word(unsigned int& word, double input) {
    asm volatile("" : "+r"(word) : "d"(input));
}
#endif

// ``pack``'s registers as if rewritten once ``dependency`` is ready (see after()).
template <typename T, int N, typename C>
FUSEDOPT_DEVICE void hold_words(Pack<T, N>& pack, C dependency) {
#if defined(FUSEDOPT_HOST_BUILD)
    (void)pack;
    (void)dependency;
#else
    constexpr int WORDS = sizeof(Pack<T, N>) / 4;
    unsigned int words[WORDS];
    memcpy(words, &pack, sizeof words);
#pragma unroll
    for (int i = 0; i < WORDS; ++i) after_word(words[i], dependency);
    memcpy(&pack, words, sizeof words);
#endif
}

// One operand's VEC elements in the vector loop, which runs them in parts of PART elements
// (16 bytes of the widest operand). An operand whose VEC elements fill 16 bytes is one
// 128-bit access before the parts and one after; a wider one is one access per part, so
// only a part of it is ever held in registers.
template <typename T, int VEC, int PART, bool WHOLE = sizeof(T) * VEC <= 16>
struct Operand;

template <typename T, int VEC, int PART>
struct Operand<T, VEC, PART, true> {
    Pack<T, VEC> pack;
    FUSEDOPT_DEVICE void begin(const T* at) { pack = *reinterpret_cast<const Pack<T, VEC>*>(at); }
    FUSEDOPT_DEVICE void load_part(const T*, int) {}
    FUSEDOPT_DEVICE T& at(int q, int e) { return pack.v[q * PART + e]; }
    FUSEDOPT_DEVICE void store_part(T*, int) const {}
    FUSEDOPT_DEVICE void end(T* at) const { *reinterpret_cast<Pack<T, VEC>*>(at) = pack; }
    template <typename C>
    FUSEDOPT_DEVICE void hold(C dependency) { hold_words(pack, dependency); }
};

template <typename T, int VEC, int PART>
struct Operand<T, VEC, PART, false> {
    Pack<T, PART> part;
    FUSEDOPT_DEVICE void begin(const T*) {}
    FUSEDOPT_DEVICE void load_part(const T* at, int q) {
        part = *reinterpret_cast<const Pack<T, PART>*>(at + q * PART);
    }
    FUSEDOPT_DEVICE T& at(int, int e) { return part.v[e]; }
    FUSEDOPT_DEVICE void store_part(T* at, int q) const {
        *reinterpret_cast<Pack<T, PART>*>(at + q * PART) = part;
    }
    FUSEDOPT_DEVICE void end(T*) const {}
    template <typename C>
    FUSEDOPT_DEVICE void hold(C dependency) { hold_words(part, dependency); }
};

template <int NS>
struct TableView {
    const long long* table;
    int n_tensors;

    // Offsets in 64 bits (row * n_tensors + t): past 2**31 table entries an int would wrap.
    FUSEDOPT_DEVICE long long at(int row, long long t) const {
        return table[static_cast<long long>(row) * n_tensors + t];
    }
    FUSEDOPT_DEVICE long long address(int operand, int t) const { return at(operand, t); }
    FUSEDOPT_DEVICE long long size(int t) const { return at(2 + NS, t); }
    FUSEDOPT_DEVICE double grad_scale(int t) const { return as_double(at(3 + NS, t)); }
    FUSEDOPT_DEVICE double grad_limit(int t) const { return as_double(at(4 + NS, t)); }
    FUSEDOPT_DEVICE long long stream(int t) const { return at(5 + NS, t); }
    FUSEDOPT_DEVICE long long work(int block) const { return at(6 + NS, block); }

    // Work item ``block``'s tensor and its elements [begin, end): the item's index of
    // ``chunk`` elements, the last one as long as the tensor has left.
    struct Chunk {
        int t;
        long long begin, end;
    };
    FUSEDOPT_DEVICE Chunk chunk_of(int block, long long chunk) const {
        const long long item = work(block);
        const int t = static_cast<int>(item >> 32);
        const long long n = size(t);
        const long long begin = (item & 0xffffffffLL) * chunk;
        return {t, begin, begin + chunk < n ? begin + chunk : n};
    }
};

// One element's trip: widen the param (from the master, the split halves, itself plus its
// compensation, or itself), the grad (clipped) and the state; run the rule; round and
// store. Values move in bits. ``base`` and ``i`` (STOCHASTIC only) key the element's
// random bits: the tensor's stream at this step, and the element's index.
template <typename P, typename G, typename S, int MODE, int NS>
struct Element {
    using C = compute_t<P>;
    using PB = typename Storage<P>::bits;
    using GB = typename Storage<G>::bits;
    using SB = typename Storage<S>::bits;
    using XB = typename MasterSlot<MODE, P>::type;
    static constexpr int NSA = NS > 0 ? NS : 1;  // zero-length arrays are not C++

    template <typename Rule>
    static FUSEDOPT_DEVICE void run(const Rule& rule, PB& p, GB g, SB* s, XB& x, C scale,
                                    C limit, unsigned int base, long long i) {
        C pe;
        if (MODE == MASTER) {
            pe = static_cast<C>(x);
        } else if (MODE == REMAINDER) {
            pe = rebuild_master(p, static_cast<short>(x));
        } else if constexpr (MODE == KAHAN) {
            pe = Storage<P>::load(p) + Storage<P>::load(x);
        } else {
            pe = Storage<P>::load(p);
        }
        C se[NSA];
        for (int k = 0; k < NS; ++k) se[k] = Storage<S>::load(s[k]);
        rule(pe, clip_grad(static_cast<C>(Storage<G>::load(g)), scale, limit), se);
        if (MODE == MASTER) {
            x = static_cast<XB>(pe);
            p = Storage<P>::template store<NEAREST_AWAY>(pe);
        } else if (MODE == REMAINDER) {
            const Split split = split_master(static_cast<float>(pe));
            p = split.hi;
            x = static_cast<XB>(split.remainder);
        } else if constexpr (MODE == KAHAN) {
            p = Storage<P>::store(pe);
            x = Storage<P>::store(pe - Storage<P>::load(p));  // exact in C, then rounded
        } else if constexpr (MODE == STOCHASTIC) {
            const unsigned int element = element_hash(base, i);
            p = Storage<P>::store_stochastic(pe, array_bits(element, 0));
            for (int k = 0; k < NS; ++k) {
                s[k] = Storage<S>::store_stochastic(se[k], array_bits(element, 1 + k));
            }
            return;
        } else {
            p = Storage<P>::store(pe);
        }
        for (int k = 0; k < NS; ++k) s[k] = Storage<S>::store(se[k]);
    }
};

// Where a rule's per-tensor scalars come from. An elementwise rule has none: it is made
// from its row alone. A rule with per-tensor reductions (LAMB's trust_lr) also reads
// values[j * n_tensors + t] for its j-th per-tensor scalar, made on the device by the
// reduction phase in double and rounded to the compute type here, once.
struct NoTensorScalars {};
struct TensorScalars {
    const double* values;
    int n_tensors;
};

template <typename Rule, typename C>
FUSEDOPT_DEVICE Rule make_rule(const C* row, NoTensorScalars, int) {
    return Rule::from(row);
}
template <typename Rule, typename C>
FUSEDOPT_DEVICE Rule make_rule(const C* row, TensorScalars extra, int t) {
    return Rule::from(row, extra.values + t, extra.n_tensors);
}

// Runs Rule over this block's chunk: NS optimizer slots of storage S, plus the master slot
// for MASTER and REMAINDER. The rule sees the param and the slots in the compute type,
// in place, and the grad (clipped as the table says).
template <typename P, typename G, typename S, int MODE, int NS, typename Rule,
          typename Extra = NoTensorScalars>
FUSEDOPT_DEVICE void apply_chunk(const long long* table, int n_tensors, long long chunk,
                                 const Steps<compute_t<P>>& steps, Extra extra = Extra()) {
    using C = compute_t<P>;
    using E = Element<P, G, S, MODE, NS>;
    using PB = typename E::PB;
    using GB = typename E::GB;
    using SB = typename E::SB;
    using XB = typename E::XB;
    constexpr bool HAS_SLOT = HasSlot<MODE>::value;
    constexpr int N = NS + (HAS_SLOT ? 1 : 0);  // slots in the table
    constexpr int NSA = E::NSA;
    constexpr int NARROW = Min<Min<sizeof(PB), sizeof(GB)>::value,
                               Min<NS ? sizeof(SB) : 16, HAS_SLOT ? sizeof(XB) : 16>::value
                               >::value;
    constexpr int WIDE = Max<Max<sizeof(PB), sizeof(GB)>::value,
                             Max<NS ? sizeof(SB) : 1, HAS_SLOT ? sizeof(XB) : 1>::value
                             >::value;
    constexpr int VEC = VecWidth<NARROW>::value;
    constexpr int PART = VecWidth<WIDE>::value;
    constexpr int PARTS = VEC / PART;
    constexpr int GROUP = 1;
    static_assert(NS <= MAX_SLOTS, "a rule has at most MAX_SLOTS state slots");

    if (steps.skipped()) return;  // a grad of this step was not finite: change nothing
    const TableView<N> view{table, n_tensors};
    const auto [t, begin, end] = view.chunk_of(blockIdx.x, chunk);
    const C scale = static_cast<C>(view.grad_scale(t));
    const C limit = static_cast<C>(view.grad_limit(t));
    // Where every operand is as wide as the compute type, a vector is few elements and the
    // scalars are the larger share of the registers: they are read again (from L1, the
    // same address for every thread) for each element rather than held (RELOAD).
    constexpr bool RELOAD = NARROW == sizeof(C);
    const C* row = steps.row(t);
    const Rule rule = make_rule<Rule>(row, extra, t);
    const unsigned int base = MODE == STOCHASTIC ? stream_base(view.stream(t), steps.step(t)) : 0u;

    PB* p = reinterpret_cast<PB*>(view.address(0, t));
    const GB* g = reinterpret_cast<const GB*>(view.address(1, t));
    SB* s[NSA];
    XB* x = HAS_SLOT ? reinterpret_cast<XB*>(view.address(2 + NS, t)) : nullptr;
    long long misaligned = (view.address(0, t) | view.address(1, t)) & 15;
    for (int k = 0; k < NS; ++k) {
        s[k] = reinterpret_cast<SB*>(view.address(2 + k, t));
        misaligned |= view.address(2 + k, t) & 15;
    }
    if (HAS_SLOT) misaligned |= view.address(2 + NS, t) & 15;
    // The addresses come from a table in memory, so the compiler cannot know they are
    // global; saying so turns generic LD/ST into LDG/STG.
    assume_global(p);
    assume_global(g);
    for (int k = 0; k < NS; ++k) assume_global(s[k]);
    if (HAS_SLOT) assume_global(x);

    long long i = begin;
    // Vector main loop: chunk sizes are multiples of VEC, so begin is VEC-aligned in
    // elements; byte alignment of every operand was checked above. The VEC elements go
    // through in PARTS parts of 16 bytes of the widest operand; a narrower operand is
    // loaded whole before the parts and stored after them (Operand).
    if (misaligned == 0) {
        const long long vec_end = begin + (end - begin) / VEC * VEC;
        for (long long j = begin + static_cast<long long>(threadIdx.x) * VEC; j < vec_end;
             j += static_cast<long long>(blockDim.x) * VEC) {
            Operand<PB, VEC, PART> po;
            Operand<GB, VEC, PART> go;
            Operand<SB, VEC, PART> so[NSA];
            Operand<XB, VEC, PART> xo;
            po.begin(p + j);
            go.begin(g + j);
            for (int k = 0; k < NS; ++k) so[k].begin(s[k] + j);
            if (HAS_SLOT) xo.begin(x + j);
            C group_scale = scale;
            const C* group_row = row;
#pragma unroll
            for (int q = 0; q < PARTS; ++q) {
                po.load_part(p + j, q);
                go.load_part(g + j, q);
                for (int k = 0; k < NS; ++k) so[k].load_part(s[k] + j, q);
                if (HAS_SLOT) xo.load_part(x + j, q);
#pragma unroll
                for (int e = 0; e < PART; ++e) {
                    SB se[NSA];
                    for (int k = 0; k < NS; ++k) se[k] = so[k].at(q, e);
                    E::run(RELOAD ? make_rule<Rule>(group_row, extra, t) : rule, po.at(q, e), go.at(q, e), se,
                           xo.at(q, e), group_scale, limit, base, j + q * PART + e);
                    for (int k = 0; k < NS; ++k) so[k].at(q, e) = se[k];
                    // Every GROUP elements, what the next ones read (the grad scale and the
                    // loaded packs) is made to depend on the last ones' results: the
                    // compiler cannot start the next group early, which caps how many
                    // elements it keeps in registers at once.
                    const int done = q * PART + e + 1;
                    if (done % GROUP == 0 && done < VEC) {
                        for (int d = e + 1 - GROUP; d <= e; ++d) after(group_scale, po.at(q, d));
                        if (RELOAD) after_pointer(group_row, group_scale);
                        po.hold(group_scale);
                        go.hold(group_scale);
                        for (int k = 0; k < NS; ++k) so[k].hold(group_scale);
                        if (HAS_SLOT) xo.hold(group_scale);
                    }
                }
                po.store_part(p + j, q);
                for (int k = 0; k < NS; ++k) so[k].store_part(s[k] + j, q);
                if (HAS_SLOT) xo.store_part(x + j, q);
            }
            po.end(p + j);
            for (int k = 0; k < NS; ++k) so[k].end(s[k] + j);
            if (HAS_SLOT) xo.end(x + j);
        }
        i = vec_end;
    }
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) {
        PB pe = p[j];
        SB se[NSA];
        for (int k = 0; k < NS; ++k) se[k] = s[k][j];
        XB xe = HAS_SLOT ? x[j] : XB();
        E::run(RELOAD ? make_rule<Rule>(row, extra, t) : rule, pe, g[j], se, xe, scale, limit, base, j);
        p[j] = pe;
        for (int k = 0; k < NS; ++k) s[k][j] = se[k];
        if (HAS_SLOT) x[j] = xe;
    }
}

}  // namespace fusedopt

// The parameters of every optimizer kernel, after the template arguments: the launch table,
// its tensor count and chunk, then the step's scalar rows, control block and flag ring
// (kernels/steps.cuh).
#define FUSEDOPT_OPTIMIZER_PARAMS(P)                                                       \
    const long long *__restrict__ table, int n_tensors, long long chunk,                    \
        const fusedopt::compute_t<P> *__restrict__ rows,                                    \
        const long long *__restrict__ control, const int *__restrict__ flags

// The body of every optimizer kernel: the rule (the last argument) over this block's chunk
// with NS state slots.
#define FUSEDOPT_APPLY(P, G, S, MODE, NS, ...)                                            \
    fusedopt::apply_chunk<P, G, S, MODE, NS, __VA_ARGS__>(                                  \
        table, n_tensors, chunk,                                                            \
        fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors})

// The same for a rule with per-tensor scalars: the kernel's last parameter is
// ``const double* tensor_scalars`` (fusedopt::TensorScalars).
#define FUSEDOPT_APPLY_PER_TENSOR(P, G, S, MODE, NS, ...)                                 \
    fusedopt::apply_chunk<P, G, S, MODE, NS, __VA_ARGS__>(                                  \
        table, n_tensors, chunk,                                                            \
        fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors},          \
        fusedopt::TensorScalars{tensor_scalars, n_tensors})
