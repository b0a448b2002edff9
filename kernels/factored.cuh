// Factored second moments (Adafactor: ``factored`` in fusedopt/algorithms/spec.py) over the
// optimizer's own launch table (common.cuh), whose three slots are the row factor r, the
// column factor c and the whole moment v (fusedopt/memory/factored.py). A tensor of rank >= 2
// is seen as slices (B, R, C): element (b, i, j) reads r[b R + i], c[b C + j] and its
// slice's denominator m; a tensor of rank < 2 keeps v element by element. The phases of a
// step (fusedopt/engine/reductions.py), one launch each per launch group, every launch one
// block per work item (a chunk of CHUNK elements of one tensor):
//   <family>_factor   the block's share of its tensor's B (R + C) lines (rows, then
//       columns), one thread a line: the line's sum of Moment::square of the clipped grads
//       in double, in order, divided by its length, rounded once, and moved into its factor
//   <family>_means    the block's share of its tensor's B slices, one thread a slice: the
//       mean of the slice's new row factors, in double, in order (the host makes each
//       slice's denominator from them with the algorithm's own array formula)
//   <family>_reduce   (kernels/factored_reduce.cuh) the terms of the reduction rule of each
//       element, given its second-moment estimate, summed per block in double
//   <family>          the element rule of each element, given its estimate; a tensor of
//       rank < 2 stores its moved moment
// Each moves only what the CPU backend's passes move (fusedopt/backends/cpu/factored.py), in
// the same operations: the factors and the estimates bit for bit where the sums are; a
// line's and a slice's sum are each within (n - 1) u of their exact value (n terms, all >= 0,
// u = 2^-53), as the CPU's are, in another order.
//
// Shapes (int64, T tensors; fusedopt/backends/cuda/factored.py builds it):
//   shapes[t], shapes[T + t], shapes[2T + t]   B, R, C of tensor t (B = 0: rank < 2)
//   shapes[3T + t]                              its first slice among the group's slices
// Denominators: one per slice of the group, in the compute type.
#pragma once

#include "common.cuh"

namespace fusedopt {

//: Slots of a factored moment's table: the row factor, the column factor, the whole moment.
constexpr int FACTORED_SLOTS = 3;

struct FactoredShapes {
    const long long* shapes;
    int n_tensors;
    FUSEDOPT_DEVICE long long at(int row, int t) const {
        return shapes[static_cast<long long>(row) * n_tensors + t];
    }
    FUSEDOPT_DEVICE long long slices(int t) const { return at(0, t); }
    FUSEDOPT_DEVICE long long rows(int t) const { return at(1, t); }
    FUSEDOPT_DEVICE long long cols(int t) const { return at(2, t); }
    FUSEDOPT_DEVICE long long first_slice(int t) const { return at(3, t); }
};

// Factored moments are kept in the param's type, plain (the engine refuses the others).
template <typename P, typename G, typename S, int MODE>
struct PlainFactored {
    static constexpr bool value = MODE == PLAIN && sizeof(P) == sizeof(G) &&
                                  sizeof(P) == sizeof(S) && sizeof(P) >= 4;
};

// This block's tensor, and its share [lo, hi) of ``count`` items of that tensor: the items
// split evenly over the tensor's work items, in order.
struct Share {
    int t;
    long long lo, hi;
};

template <int N>
FUSEDOPT_DEVICE Share share_of(const TableView<N>& view, long long chunk,
                               const FactoredShapes& shapes, bool lines) {
    const long long work = view.work(blockIdx.x);
    const int t = static_cast<int>(work >> 32);
    const long long items = (view.size(t) + chunk - 1) / chunk;
    const long long index = work & 0xffffffffLL;
    const long long B = shapes.slices(t);
    const long long count = lines ? B * (shapes.rows(t) + shapes.cols(t)) : B;
    return {t, count * index / items, count * (index + 1) / items};
}

// The factor phase: each line of the block's share summed and moved into its factor.
template <typename P, typename G, typename S, int MODE, typename Moment>
FUSEDOPT_DEVICE void move_factors(const long long* table, int n_tensors, long long chunk,
                                  const Steps<compute_t<P>>& steps, const long long* shapes) {
    using C = compute_t<P>;
    static_assert(PlainFactored<P, G, S, MODE>::value, "factored moments are plain");
    if (steps.skipped()) return;  // a grad of this step was not finite: change nothing
    const TableView<FACTORED_SLOTS> view{table, n_tensors};
    const FactoredShapes sh{shapes, n_tensors};
    const Share share = share_of(view, chunk, sh, true);
    const int t = share.t;
    if (sh.slices(t) == 0) return;  // rank < 2: moved in the element pass
    const long long R = sh.rows(t), NC = sh.cols(t), BR = sh.slices(t) * R;
    const Moment moment = Moment::from(steps.row(t));
    const C scale = static_cast<C>(view.grad_scale(t));
    const C limit = static_cast<C>(view.grad_limit(t));
    const P* g = reinterpret_cast<const P*>(view.address(1, t));
    P* r = reinterpret_cast<P*>(view.address(2, t));
    P* c = reinterpret_cast<P*>(view.address(3, t));
    assume_global(g);
    assume_global(r);
    assume_global(c);
    for (long long line = share.lo + threadIdx.x; line < share.hi; line += blockDim.x) {
        double sum = 0.0;
        if (line < BR) {  // a row: C grads side by side
            const P* at = g + line * NC;
            for (long long j = 0; j < NC; ++j) {
                sum += static_cast<double>(moment.square(clip_grad(static_cast<C>(at[j]), scale,
                                                                   limit)));
            }
            r[line] = moment.moment(r[line], static_cast<C>(sum / static_cast<double>(NC)));
        } else {  // a column of slice b: R grads C apart
            const long long col = line - BR, b = col / NC;
            const P* at = g + b * R * NC + (col - b * NC);
            for (long long i = 0; i < R; ++i) {
                sum += static_cast<double>(moment.square(clip_grad(static_cast<C>(at[i * NC]),
                                                                   scale, limit)));
            }
            c[col] = moment.moment(c[col], static_cast<C>(sum / static_cast<double>(R)));
        }
    }
}

// The mean of each slice's new row factors, in double: means[first slice + b].
template <typename P, typename G, typename S, int MODE>
FUSEDOPT_DEVICE void slice_means(const long long* table, int n_tensors, long long chunk,
                                 const long long* shapes, double* means) {
    static_assert(PlainFactored<P, G, S, MODE>::value, "factored moments are plain");
    const TableView<FACTORED_SLOTS> view{table, n_tensors};
    const FactoredShapes sh{shapes, n_tensors};
    const Share share = share_of(view, chunk, sh, false);
    const long long R = sh.rows(share.t), first = sh.first_slice(share.t);
    const P* r = reinterpret_cast<const P*>(view.address(2, share.t));
    assume_global(r);
    for (long long b = share.lo + threadIdx.x; b < share.hi; b += blockDim.x) {
        double sum = 0.0;
        for (long long i = 0; i < R; ++i) sum += static_cast<double>(r[b * R + i]);
        means[first + b] = sum / static_cast<double>(R);
    }
}

// One element's second moment after this step: its estimate from the factors (rank >= 2),
// or its whole moment moved with the grad (rank < 2).
template <typename C, typename P, typename Moment>
struct Estimates {
    const P* r;
    const P* c;
    const C* m;
    long long R, NC;
    FUSEDOPT_DEVICE C of(const Moment& moment, long long j) const {
        const long long row = j / NC, b = row / R;
        return moment.estimate(r[row], c[b * NC + (j - row * NC)], m[b]);
    }
};

// The block's chunk of tensor t as the element pass or the reduction reads it: each
// element's param, clipped grad and second moment v go to ``visit(j, p, g, v)``, in 128-bit
// vectors of the param, grad (and whole moment) where they are aligned, then a scalar tail.
// ``visit`` returns the new param and moment through its references when ``WRITES``.
template <typename P, bool WRITES, typename Moment, typename Visit>
FUSEDOPT_DEVICE void visit_chunk(P* p, const P* g, P* v, bool factored,
                                 const Estimates<compute_t<P>, P, Moment>& estimates,
                                 const Moment& moment, long long begin, long long end,
                                 compute_t<P> scale, compute_t<P> limit, Visit& visit) {
    using C = compute_t<P>;
    constexpr int VEC = VecWidth<sizeof(P)>::value;
    using Vec = Pack<P, VEC>;
    long long misaligned = (reinterpret_cast<long long>(p) | reinterpret_cast<long long>(g)) & 15;
    if (!factored) misaligned |= reinterpret_cast<long long>(v) & 15;
    long long i = begin;
    if (misaligned == 0) {
        const long long vec_end = begin + (end - begin) / VEC * VEC;
        const long long stride = static_cast<long long>(blockDim.x) * VEC;
        if (factored) {
            for (long long j = begin + static_cast<long long>(threadIdx.x) * VEC; j < vec_end;
                 j += stride) {
                Vec pv = *reinterpret_cast<const Vec*>(p + j);
                const Vec gv = *reinterpret_cast<const Vec*>(g + j);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    C pe = static_cast<C>(pv.v[e]);
                    C ve = estimates.of(moment, j + e);
                    visit(pe, clip_grad(static_cast<C>(gv.v[e]), scale, limit), ve);
                    pv.v[e] = static_cast<P>(pe);
                }
                if (WRITES) *reinterpret_cast<Vec*>(p + j) = pv;
            }
        } else {
            for (long long j = begin + static_cast<long long>(threadIdx.x) * VEC; j < vec_end;
                 j += stride) {
                Vec pv = *reinterpret_cast<const Vec*>(p + j);
                const Vec gv = *reinterpret_cast<const Vec*>(g + j);
                Vec vv = *reinterpret_cast<const Vec*>(v + j);
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    C pe = static_cast<C>(pv.v[e]);
                    const C ge = clip_grad(static_cast<C>(gv.v[e]), scale, limit);
                    C ve = moment.moment(static_cast<C>(vv.v[e]), moment.square(ge));
                    visit(pe, ge, ve);
                    pv.v[e] = static_cast<P>(pe);
                    vv.v[e] = static_cast<P>(ve);
                }
                if (WRITES) {
                    *reinterpret_cast<Vec*>(p + j) = pv;
                    *reinterpret_cast<Vec*>(v + j) = vv;
                }
            }
        }
        i = vec_end;
    }
    for (long long j = i + threadIdx.x; j < end; j += blockDim.x) {
        C pe = static_cast<C>(p[j]);
        const C ge = clip_grad(static_cast<C>(g[j]), scale, limit);
        C ve = factored ? estimates.of(moment, j)
                        : moment.moment(static_cast<C>(v[j]), moment.square(ge));
        visit(pe, ge, ve);
        if (WRITES) {
            p[j] = static_cast<P>(pe);
            if (!factored) v[j] = static_cast<P>(ve);
        }
    }
}

// The operands of the block's chunk: (tensor, begin, end) and the tensor's arrays.
template <typename P, typename Moment>
struct FactoredChunk {
    int t;
    long long begin, end;
    P* p;
    const P* g;
    P* v;
    bool factored;
    Estimates<compute_t<P>, P, Moment> estimates;
    compute_t<P> scale, limit;

    FUSEDOPT_DEVICE static FactoredChunk of(const long long* table, int n_tensors,
                                            long long chunk, const long long* shapes,
                                            const compute_t<P>* denominators) {
        using C = compute_t<P>;
        const TableView<FACTORED_SLOTS> view{table, n_tensors};
        const FactoredShapes sh{shapes, n_tensors};
        const auto [t, begin, end] = view.chunk_of(blockIdx.x, chunk);
        FactoredChunk out{t, begin, end,
                          reinterpret_cast<P*>(view.address(0, t)),
                          reinterpret_cast<const P*>(view.address(1, t)),
                          reinterpret_cast<P*>(view.address(4, t)),
                          sh.slices(t) != 0,
                          {reinterpret_cast<const P*>(view.address(2, t)),
                           reinterpret_cast<const P*>(view.address(3, t)),
                           denominators + sh.first_slice(t), sh.rows(t), sh.cols(t)},
                          static_cast<C>(view.grad_scale(t)),
                          static_cast<C>(view.grad_limit(t))};
        assume_global(out.p);
        assume_global(out.g);
        assume_global(out.v);
        return out;
    }
};

// The element pass: Rule (the algorithm's element rule, reading the estimate as its third
// slot) over the block's chunk.
template <typename Rule, typename C>
struct ApplyRule {
    const Rule& rule;
    FUSEDOPT_DEVICE void operator()(C& p, C g, C& v) const {
        C s[FACTORED_SLOTS] = {C(0), C(0), v};
        rule(p, g, s);
    }
};

template <typename P, typename G, typename S, int MODE, typename Rule, typename Moment>
FUSEDOPT_DEVICE void apply_factored(const long long* table, int n_tensors, long long chunk,
                                    const Steps<compute_t<P>>& steps, const long long* shapes,
                                    const compute_t<P>* denominators, TensorScalars extra) {
    using C = compute_t<P>;
    static_assert(PlainFactored<P, G, S, MODE>::value, "factored moments are plain");
    if (steps.skipped()) return;  // a grad of this step was not finite: change nothing
    const FactoredChunk<P, Moment> at =
        FactoredChunk<P, Moment>::of(table, n_tensors, chunk, shapes, denominators);
    const C* row = steps.row(at.t);
    const Rule rule = make_rule<Rule>(row, extra, at.t);
    const Moment moment = Moment::from(row);
    ApplyRule<Rule, C> visit{rule};
    visit_chunk<P, true>(at.p, at.g, at.v, at.factored, at.estimates, moment, at.begin, at.end,
                         at.scale, at.limit, visit);
}

}  // namespace fusedopt

// The parameters of a factored moment's kernels: the optimizer kernel's, then the shapes.
#define FUSEDOPT_FACTORED_PARAMS(P) \
    FUSEDOPT_OPTIMIZER_PARAMS(P), const long long* __restrict__ shapes

// The factor phase's body: Moment (the algorithm's square, moment and estimate).
#define FUSEDOPT_MOVE_FACTORS(P, G, S, MODE, ...)                                          \
    fusedopt::move_factors<P, G, S, MODE, __VA_ARGS__>(                                     \
        table, n_tensors, chunk,                                                            \
        fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors}, shapes)

// The element pass's body: Rule, then Moment. Its parameters end in the denominators and
// the per-tensor scalars.
#define FUSEDOPT_APPLY_FACTORED(P, G, S, MODE, ...)                                        \
    fusedopt::apply_factored<P, G, S, MODE, __VA_ARGS__>(                                   \
        table, n_tensors, chunk,                                                            \
        fusedopt::Steps<fusedopt::compute_t<P>>{rows, control, flags, n_tensors}, shapes,   \
        denominators, fusedopt::TensorScalars{tensor_scalars, n_tensors})
