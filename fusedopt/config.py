"""Launch sizes and numeric policy, in one place.

Tests shrink these (``monkeypatch``) to exercise tails and multi-block paths on small
arrays; nothing else in the package hard-codes a launch size.
"""

#: CUDA threads per block for every elementwise kernel.
THREADS_PER_BLOCK = 256

#: Elements one CUDA block updates: a multiple of every vector width (8 for 16-bit types),
#: large enough to amortise the block's table lookups, small enough to fill the GPU.
CUDA_CHUNK = 65536

#: Elements one CPU task updates; a task is the unit Numba's threads share out.
CPU_CHUNK = 65536
#: Factored moments (fusedopt/backends/cpu/factored.py): about this many elements of a
#: tensor's rows add their column sums into one partial row, so a 4096 x 4096 param's
#: column sums take 64 partial rows (2 MB beside its 64 MB of grads).
CPU_FACTOR_BLOCK = 1 << 18

#: Threads of a CPU step (fusedopt/backends/cpu/threads.py): None follows the caller
#: (``torch.get_num_threads()`` for fusedopt.torch, Numba's own setting otherwise); a number
#: is used for every step (at most ``NUMBA_NUM_THREADS``).
CPU_THREADS = None

#: A CPU step of fewer elements runs on the calling thread, without waking Numba's pool
#: (measured: benchmarks/RESULTS.md, "Threads of the CPU step": the calling thread was 1.5x
#: faster at 2^18 elements, the pool 1.2x faster at 2^20).
CPU_SERIAL_BELOW = 1 << 19

#: A parallel CPU step hands its work items out one at a time to whichever thread asks
#: (Numba's chunk size 1), so that a thread paused by the OS scheduler on a shared core
#: leaves its items to the running one (benchmarks/RESULTS.md, "Work items handed out one at
#: a time"). False: Numba's static split, equal halves up front (1% faster on cores of
#: its own, 8-15% slower on shared ones).
CPU_DYNAMIC_ITEMS = True

#: Steps that need only the plan, the scalars and the launches (no loss scale, clipping by
#: norm, reductions or averages, decided on the host) skip the other phases' calls
#: (fusedopt/engine/plain.py). False: every step runs every phase, for comparing the two.
PLAIN_STEP = True

#: How idle OpenMP threads wait, set in the environment by ``import fusedopt`` before Numba's
#: threading layer starts, unless the user set a wait policy there: "passive" (sleep at
#: once; measured: benchmarks/RESULTS.md, "Why idle threads now sleep"), "active", or a
#: number of spin rounds (``GOMP_SPINCOUNT``). None leaves the runtime's default.
CPU_WAIT_POLICY = "passive"

#: Where fusedopt.FlatParams starts each param inside its buffer: a multiple of this many
#: bytes (a cache line; also keeps every view aligned for the 128-bit CUDA accesses).
FLAT_ALIGN_BYTES = 64

#: Compute capability the kernels are compiled for when the device is unknown (gates, tools).
GATE_ARCHS = ("sm_80", "sm_90")

#: The one of GATE_ARCHS the gates compile every entry point for (H100, H200). The others
#: compile the entry points of a sample of the storages (fusedopt/backends/cuda/nvrtc.py:
#: ``gate_names``): no kernel source depends on the architecture, so they differ only in
#: ptxas' machine code, and a second full compile would double the gates' cold cost.
GATE_FULL_ARCH = "sm_90"

#: Register budget per thread the machine-code gate enforces (float compute: 64 keeps half
#: the threads of an sm_80/sm_90 SM resident).
REGISTER_BUDGET = 64

#: The budget of float64 kernels, whose values take two registers each. Their scalars are
#: chosen on the device per step (kernels/steps.cuh) and held in registers, and the
#: five-operand ones (AMSGrad, centered RMSprop with momentum) need up to 72: 3 blocks of
#: 256 threads per SM, whose loads in flight (2 elements of 5 operands per thread) still
#: cover the bandwidth-delay product of an A100 or H100.
REGISTER_BUDGET_FLOAT64 = 72

#: The budget of entry points that move seven arrays: param, grad, four state slots and a
#: master, remainder or Kahan slot (Adan on 16-bit params, and the traffic ceiling that
#: moves its bytes, kernels/traffic.cu). Seven addresses hold 14
#: registers, and the four slots of one 16-byte step of the 16-bit param (8 elements) 16
#: more; ptxas gives them up to 80 (sm_80, sm_90). 80 is the most that keeps 3 blocks of
#: 256 threads resident per SM (65536 registers; a warp's are allocated in units of 256,
#: 8 per thread: 80 x 256 x 3 = 61440, 88 would leave 2 blocks), as many as the float64
#: budget keeps. Each thread then has 8 elements of at least 14 bytes read (7 bfloat16
#: arrays) in flight: about 86 KB per SM, against a bandwidth-delay product of about 18 KB
#: per SM on an H100 (3.35 TB/s x ~700 ns over 132 SMs).
REGISTER_BUDGET_SEVEN_ARRAYS = 80

#: The budget of the quantized-state entry points (kernels/quantized.cuh). A lane holds its
#: elements' decoded slot values (q8: 8 per slot, 24 for AMSGrad's three) from the rule
#: until the warp has its block's absmax, beside the slots' addresses and the map
#: tables'; ptxas gives them up to 80 (sm_80, sm_90). 80 keeps 3 blocks of 256 threads per
#: SM resident, as REGISTER_BUDGET_SEVEN_ARRAYS says, and a q8 element moves 2 bytes of
#: state where a float32 one moves 8: fewer bytes in flight are needed to cover the same
#: bandwidth-delay product. (Not measured on a GPU.)
REGISTER_BUDGET_QUANTIZED = 80

#: The budget of those that round the codes stochastically (MODE STOCHASTIC): each code
#: adds its element's random bits and a search of the entry below with its neighbour's
#: gap, and ptxas gives q8 AMSGrad (three slots, 24 values held) up to 90. 96 keeps 2
#: blocks of 256 threads per SM resident (65536 / (96 x 256)): half the warps of the float
#: kernels, for a step that moves 2 bytes of state per slot and element. (Not measured on
#: a GPU.)
REGISTER_BUDGET_QUANTIZED_STOCHASTIC = 96

#: The budget of those that keep a master slot (MODE MASTER, REMAINDER, KAHAN: Adam's
#: family only, fusedopt/backends/cuda/quantized.py): the slot's address and each
#: element's float32 master, int16 remainder or 16-bit compensation beside the values
#: held, and ptxas gives q8 AMSGrad (three slots) 84 on sm_90 in each mode. 96 keeps 2
#: blocks of 256 threads per SM resident, as the stochastic budget does. (Not measured on
#: a GPU.)
REGISTER_BUDGET_QUANTIZED_MASTER = 96

#: The budget of quantized-state entry points of four slots (Adan), in either mode: a q8
#: lane holds 32 decoded values across the shuffles, and ptxas gives them up to 88
#: registers rounded to nearest and 102 stochastically (sm_90; no spills at either). 104
#: keeps 2 blocks of 256 threads per SM resident (65536 / (104 x 256)), as the stochastic
#: budget does; the ones rounded to nearest lose the third block that 80 keeps. (Not
#: measured on a GPU.)
REGISTER_BUDGET_QUANTIZED_FOUR_SLOTS = 104

#: Loss-scaled CUDA steps that may be in doubt at once (fusedopt/memory/steps.py): the host
#: reads their flags without waiting, and waits only when this many are still unread.
STEP_WINDOW = 32

#: NVRTC options shared by the runtime and the compile gate. No fast-math: it would swap
#: IEEE sqrt and division for approximations and break agreement with the references.
#: The numeric ones are NVRTC's defaults, pinned so that no default can change under us:
#: float32 denormals are kept, not flushed to zero (``--ftz=false``), as on the CPU (Numba
#: and the host build never flush), so a grad of 1e-20, whose square 1e-40 is a float32
#: denormal, updates alike everywhere (flushed, v would be 0 and Adam's step inf or NaN
#: with a small epsilon); sqrt and division are IEEE round-to-nearest. ``--fmad=true``
#: lets a multiply and an add become one FMA: the last bits differ from the CPU's, which
#: tests/cuda_host/compare.py's GPU tolerance allows.
NVRTC_OPTIONS = ("-std=c++17", "--ftz=false", "--prec-div=true", "--prec-sqrt=true",
                 "--fmad=true")

#: Numba fastmath flags of the float64 block sums of the reduction phase (the grad pre-pass's
#: sums of squares behind clipping by norm, and the optimizers' reductions:
#: fusedopt/backends/cpu/reduce.py) and of nothing else (the terms summed are computed in IEEE
#: order beforehand): reassociation lets LLVM vectorize the float64 running sum, in an
#: order fixed at compile time (so a build still gives the same sum every run).
NORM_FASTMATH = frozenset({"reassoc", "contract"})
