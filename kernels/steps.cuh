// Which step a launch is, and whether it happens at all, decided on the device.
//
// A loss-scaled step is skipped when a grad is inf or NaN, and the host must not wait to
// find out: a grad-only pass writes a flag on the device (kernels/gradsums_reduce.cu) and
// every optimizer kernel of the step reads it and returns before writing anything. The bias
// corrections of later steps depend on how many steps were applied, which the host learns
// only later (fusedopt/engine/engine.py reads each flag back without waiting). So the host sends
// the scalars for every step number a tensor can be at - one row per candidate step,
// computed by the registry's ``scalars`` in double - and the kernel picks the row from
// the flags of the steps still in doubt. Nothing here knows any optimizer's formulas.
//
// The control block (int64, one per launch, written by fusedopt/backends/cuda/launch.py):
//   control[0]           lo: the 1-based step of scalar row 0
//   control[1]           number of scalar rows
//   control[2]           scalars per row (the rule's n_scalars)
//   control[3]           W: earlier steps still in doubt (the window), at most 63
//   control[4]           this step's flag slot, or -1 when this step cannot be skipped
//   control[5]           the flag slot of window step 0 (window step j is in slot
//                        (control[5] + j) mod control[6])
//   control[6]           slots in the flag ring
//   control[7 + t]       base_t: tensor t's step if no window step was applied
//   control[7 + T + t]   mask_t: bit j set when window step j stepped tensor t
// Tensor t's step is base_t plus the number of window steps in mask_t whose flag is 0
// (applied); its scalars are row (step - lo). flags: the ring of int32 flags, nonzero for
// a skipped step.
#pragma once

namespace fusedopt {

template <typename C>
struct Steps {
    static constexpr int HEADER = 7;  // control entries before the per-tensor rows

    const C* rows;
    const long long* control;
    const int* flags;
    int n_tensors;

    // The step's own flag: set when a grad of the step was not finite.
    FUSEDOPT_DEVICE bool skipped() const {
        const long long slot = control[4];
        return slot >= 0 && flags[slot] != 0;
    }

    // The 1-based step tensor t is at.
    FUSEDOPT_DEVICE long long step(int t) const {
        const long long window = control[3], first = control[5], ring = control[6];
        const long long mask = control[HEADER + n_tensors + t];
        long long step = control[HEADER + t];
        for (long long j = 0; j < window; ++j) {
            if ((mask >> j) & 1) step += flags[(first + j) % ring] == 0 ? 1 : 0;
        }
        return step;
    }

    // The scalars of tensor t at the step it is at.
    FUSEDOPT_DEVICE const C* row(int t) const {
        const long long r = step(t) - control[0];
        // Host bookkeeping gone wrong would read another step's scalars: the host build
        // checks this promise, a GPU only relies on it.
        __builtin_assume(r >= 0 && r < control[1]);
        return rows + r * control[2];
    }
};

}  // namespace fusedopt
