// A block's threads as fibers on the launching OS thread, for kernels whose threads
// cooperate (FUSEDOPT_HOST_COOPERATIVE: barriers, shuffles, shared memory).
//
// Each simulated thread runs on a stack of its own; the scheduler resumes every live fiber
// in turn, and each runs until it waits at the block's barrier or returns. Once a pass has
// resumed them all, every live fiber waits at the barrier: the next pass releases them. A
// fiber that returns no longer holds the others, so a launch cannot hang; a block whose
// threads passed different numbers of barriers is an error once they have all returned.
// No OS threads, locks or condition variables: a context switch instead of a thread
// handoff, on one core.
//
// Included by shim.h before its keyword macros; knows nothing of CUDA.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define FUSEDOPT_HOST_FIBER_ASAN 1
#else
#define FUSEDOPT_HOST_FIBER_ASAN 0
#endif

namespace fusedopt_host {

// The switch between stacks. On x86-64 (without CET's shadow stack, which a hand-made
// switch would break) a few instructions: the System V ABI's callee-saved registers and
// the SSE/x87 control words pushed on the stack being left, the stack pointer swapped,
// the other stack's popped; the caller-saved rest the compiler has saved around the call.
// Elsewhere (aarch64 included) ucontext, whose swapcontext also sets the signal mask, a
// system call per switch: correct, and slower by about 20x per switch
// (-DFUSEDOPT_HOST_FIBER_UCONTEXT picks it on x86-64 too, to test it).
#if defined(__x86_64__) && !defined(__CET__) && !defined(FUSEDOPT_HOST_FIBER_UCONTEXT)
#define FUSEDOPT_HOST_FIBER_ASM 1
// fusedopt_host_fiber_switch(save, load): *save = this stack's pointer; continue on load.
extern "C" void fusedopt_host_fiber_switch(void** save, void* load);
asm(R"(
    .pushsection .text
    .weak fusedopt_host_fiber_switch
    .hidden fusedopt_host_fiber_switch
    .type fusedopt_host_fiber_switch, @function
fusedopt_host_fiber_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size fusedopt_host_fiber_switch, .-fusedopt_host_fiber_switch
    .popsection
)");
#else
#define FUSEDOPT_HOST_FIBER_ASM 0
#endif


// Usable bytes of each fiber's stack. The deepest a cooperative kernel went in the sanitize
// build (-O0, AddressSanitizer's redzones around every local, UBSan's checks) was 2.2 KiB
// (stacks filled with a pattern, every cooperative family over tests/cuda_host/sanitize.py's
// runs); the rest is room for what else may run on a fiber's stack: a failed check's
// throw and unwinding, a sanitizer's report with its stack trace. Pages are committed only
// when touched, so the 1024 stacks of a full block cost address space, not memory; a guard
// page below each makes an overflow a fault, not silent corruption.
constexpr std::size_t FIBER_STACK_BYTES = std::size_t(256) << 10;
// CUDA's most threads a block.
constexpr unsigned MAX_FIBERS = 1024;

// The stacks of this OS thread's fibers: mapped on first use, reused by every later block,
// unmapped when the thread ends.
class StackPool {
  public:
    StackPool() = default;
    StackPool(const StackPool&) = delete;
    StackPool& operator=(const StackPool&) = delete;
    ~StackPool() {
        for (char* base : bases_) munmap(base, mapped_bytes());
    }
    // The lowest usable byte of stack ``i`` (FIBER_STACK_BYTES from there are usable).
    char* stack(unsigned i) {
        while (bases_.size() <= i) {
            void* base = mmap(nullptr, mapped_bytes(), PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (base == MAP_FAILED) throw std::bad_alloc();
            if (mprotect(base, guard_bytes(), PROT_NONE) != 0) {
                munmap(base, mapped_bytes());
                throw std::bad_alloc();
            }
            bases_.push_back(static_cast<char*>(base));
        }
        return bases_[i] + guard_bytes();
    }

  private:
    static std::size_t guard_bytes() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }
    static std::size_t mapped_bytes() { return FIBER_STACK_BYTES + guard_bytes(); }
    std::vector<char*> bases_;
};

// Where a suspended fiber (or the scheduler) continues.
struct Context {
#if FUSEDOPT_HOST_FIBER_ASM
    void* sp = nullptr;

    // A fresh context that calls ``entry`` on the ``size`` bytes from ``stack``.
    void prepare(char* stack, std::size_t size, void (*entry)()) {
        // What fusedopt_host_fiber_switch pops, lowest first: the control words (this
        // thread's), r15 ... rbp (zero: the end of the frame-pointer chain), then ``entry``
        // as the return address, and above it a zero return address of entry's own, where
        // a call would have left one (entry starts 8 bytes past a 16-byte boundary, as
        // after a call).
        auto top = reinterpret_cast<std::uintptr_t>(stack + size) & ~std::uintptr_t(15);
        auto* slot = reinterpret_cast<std::uint64_t*>(top);
        *--slot = 0;
        *--slot = reinterpret_cast<std::uint64_t>(entry);
        for (int r = 0; r < 6; ++r) *--slot = 0;
        --slot;
        std::uint32_t csr[2] = {0, 0};
        asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
        std::memcpy(slot, csr, sizeof csr);
        sp = slot;
    }
    static void swap(Context& from, const Context& to) {
        fusedopt_host_fiber_switch(&from.sp, to.sp);
    }
#else
    ucontext_t uc{};

    void prepare(char* stack, std::size_t size, void (*entry)()) {
        if (getcontext(&uc) != 0) throw std::runtime_error("getcontext failed");
        uc.uc_stack.ss_sp = stack;
        uc.uc_stack.ss_size = size;
        uc.uc_link = nullptr;  // fibers never return from their entry
        makecontext(&uc, entry, 0);
        // makecontext has laid out the stack; with uc_stack left set, AddressSanitizer's
        // swapcontext would clear the shadow of the whole stack at every resume, live
        // frames' redzones included.
        uc.uc_stack.ss_sp = nullptr;
        uc.uc_stack.ss_size = 0;
    }
    static void swap(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif
};

// One block's fibers. ``Body`` is called as body(index) on fiber ``index``; ``enter(index)``
// runs on the scheduler before each resume of that fiber (the launcher sets the thread's
// indices there: every fiber shares the OS thread's thread_locals).
class FiberBlock {
  public:
    using Body = void (*)(unsigned index, void* context);
    using Enter = void (*)(unsigned index, void* context);

    // Runs fibers [0, n), each pass in reverse order if ``reverse``; returns after every one
    // has returned. ``body`` must not throw (the launcher catches inside it).
    void run(unsigned n, bool reverse, Body body, Enter enter, void* context) {
        if (n > MAX_FIBERS) throw std::logic_error("more than 1024 threads in a block");
        body_ = body;
        context_ = context;
        fibers_.resize(n);
        for (unsigned i = 0; i < n; ++i) start(i);
        unsigned live = n;
        FiberBlock* const outer = current_;
        current_ = this;
        while (live > 0) {  // one pass: every live fiber runs to the barrier or returns
            for (unsigned k = 0; k < n; ++k) {
                const unsigned i = reverse ? n - 1 - k : k;
                if (fibers_[i].done) continue;
                enter(i, context);
                resume(i);
                if (fibers_[i].done) --live;
            }
        }
        current_ = outer;
    }

    // From inside a fiber: wait at the block's barrier until every live fiber waits there.
    static void wait() {
        FiberBlock* block = current_;
        if (block == nullptr || block->running_ < 0) {
            std::fputs("fusedopt host: __syncthreads outside a cooperative launch\n", stderr);
            std::abort();
        }
        Fiber& fiber = block->fibers_[static_cast<unsigned>(block->running_)];
        ++fiber.barriers;
        block->suspend(fiber, false);
    }

    // Barriers fiber ``i`` passed before it returned.
    unsigned barriers(unsigned i) const { return fibers_[i].barriers; }

  private:
    struct Fiber {
        Context context;
        void* fake_stack = nullptr;  // AddressSanitizer's, for use-after-return detection
        unsigned barriers = 0;
        bool done = false;
    };

    void start(unsigned i) {
        Fiber& fiber = fibers_[i];
        fiber.barriers = 0;
        fiber.done = false;
        fiber.fake_stack = nullptr;
        fiber.context.prepare(pool().stack(i), FIBER_STACK_BYTES, &FiberBlock::entry);
    }

    void resume(unsigned i) {
        running_ = static_cast<int>(i);
#if FUSEDOPT_HOST_FIBER_ASAN
        void* fake = nullptr;
        __sanitizer_start_switch_fiber(&fake, pool().stack(i), FIBER_STACK_BYTES);
#endif
        Context::swap(scheduler_, fibers_[i].context);
#if FUSEDOPT_HOST_FIBER_ASAN
        __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
        running_ = -1;
    }

    // Back to the scheduler; ``last`` when the fiber has returned and is never resumed.
    void suspend(Fiber& fiber, bool last) {
#if FUSEDOPT_HOST_FIBER_ASAN
        __sanitizer_start_switch_fiber(last ? nullptr : &fiber.fake_stack, scheduler_bottom_,
                                       scheduler_size_);
#else
        (void)last;
#endif
        Context::swap(fiber.context, scheduler_);
#if FUSEDOPT_HOST_FIBER_ASAN
        __sanitizer_finish_switch_fiber(fiber.fake_stack, nullptr, nullptr);
#endif
    }

    static void entry() {
        FiberBlock* block = current_;
#if FUSEDOPT_HOST_FIBER_ASAN
        __sanitizer_finish_switch_fiber(nullptr, &block->scheduler_bottom_,
                                        &block->scheduler_size_);
#endif
        const unsigned i = static_cast<unsigned>(block->running_);
        block->body_(i, block->context_);
        Fiber& fiber = block->fibers_[i];
        fiber.done = true;
        block->suspend(fiber, true);
        std::abort();  // a finished fiber is never resumed
    }

    static StackPool& pool() {
        static thread_local StackPool stacks;
        return stacks;
    }

    static inline thread_local FiberBlock* current_ = nullptr;
    std::vector<Fiber> fibers_;
    Context scheduler_;
    const void* scheduler_bottom_ = nullptr;
    std::size_t scheduler_size_ = 0;
    int running_ = -1;
    Body body_ = nullptr;
    void* context_ = nullptr;
};

}  // namespace fusedopt_host
