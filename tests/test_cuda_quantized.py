"""q8 / q4 state on the CUDA backend (kernels/quantized.cuh), run on the host (tests/cuda_host).

- The CUDA step gives the CPU backend's bits - params, codes and absmax, codes rounded to
  nearest and (``stochastic_rounding``) stochastically, and the master, remainder or Kahan
  compensation beside bfloat16 params (Adam's family only) - over several
  steps, for several params of different sizes in one launch: a block whose absmax stays 0,
  a partial last block, a block that a NaN makes NaN, a param below
  ``min_quantized_size`` keeping float32 state (its own launch), chunks of several blocks
  and warps without a block in a launch's last round. The CPU backend's quantized step is
  itself held to the float64 oracle (tests/test_quantized_state.py).
- Every other family with quantized kernels likewise, each in its variant with the most
  slots: every family in q8 beside float32 params; one family per count of slots (1 to 4,
  another family of a count in each run) in q8 beside bfloat16 params with stochastic
  rounding, and in q4 beside bfloat16 params rounded to nearest (one test each, looping
  over the families: a host launch of these kernels runs a block's threads as OS threads,
  and each family costs a CPU compile of its variant, so each test item costs seconds;
  why one family per count covers the rest: the test's docstring).
- Schedule-free AdamW and SGD, whose z (and the y eval() keeps) stay float32 beside the
  codes: the same bits for params, codes, absmax and those float32 slots, and for the
  points eval() gives, through eval() and train() (the switch's quantized kernel), in q8
  and q4 beside float32 params, SGD in both conventions; beside bfloat16 params (eval()
  refused there on every backend) their steps, AdamW's in q4 with its param and codes
  rounded stochastically, SGD's in q8 rounded to nearest.
- A quantized step the CUDA backend has no kernel for is refused before anything changes,
  naming what is missing and backend='cpu'.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import launch, quantized
from fusedopt.engine.engine import Engine
from fusedopt.engine.modes import switch
from fusedopt.memory import quant
from fusedopt.memory.storage import Storage, mode_of

#: Slots kept float32 beside the codes (``Slot.float_state``, as declared: schedule-free's
#: points z and y).
FLOAT_SLOTS = ("z", "y")
#: The slot a mode keeps after the optimizer's, and its dtype (None: the param's):
#: fusedopt/memory/storage.py's masters and Kahan's compensation, never coded.
MASTER_SLOTS = {"master": np.float32, "remainder": np.int16, "compensation": None}
#: Quantized at min_quantized_size 256: 5000 (a partial last block), 300, 1031 and 37 x 53;
#: 100 keeps float32 state.
SHAPES = ((5000,), (100,), (300,), (1031,), (37, 53))
MIN_SIZE = 256
STEPS = 3
#: The grads of param 0's first block stay 0 (its absmax stays 0); element NAN of param 0
#: gets a NaN grad at the last step (its block's absmax becomes NaN).
NAN = 600

CASES = [  # (name, convention, hyperparameters, param dtype, constructor options)
    ("adam", "keras", dict(learning_rate=1e-2), np.float32, {}),
    ("adamw", "torch", dict(learning_rate=1e-2, weight_decay=0.1, amsgrad=True),
     ml_dtypes.bfloat16, dict(stochastic_rounding=True)),  # params and codes
    ("adamw", "torch", dict(learning_rate=1e-2, weight_decay=0.01), np.float32, {}),
]


def _run(backend, name, convention, hp, dtype, options, fmt, switch_after=None):
    """Params and each param's slots as (name, array) pairs after :data:`STEPS` steps;
    ``switch_after``: eval() then train() after that step (schedule-free)."""
    rng = np.random.default_rng(5)
    options = dict(options)
    grad_dtype = options.pop("grads", dtype)  # the param's dtype unless a master's float32
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    engine = Engine(REGISTRY[name], convention, backend=backend, state_dtype=fmt,
                    min_quantized_size=MIN_SIZE, seed=3, **options)
    engine.add_group(hp)
    engine.add_params(params)
    for step in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        grads[0][:quant.FORMATS[fmt].block] = 0.0
        if step == STEPS - 1:
            grads[0][NAN] = np.nan
        engine.step([g.astype(grad_dtype) for g in grads])
        if step == switch_after:
            switch(engine, True)
            params.append([p.copy() for p in engine.params[:len(SHAPES)]])  # x
            params.append([np.asarray(y).copy() for y in engine.kept])
            switch(engine, False)
    return params, [[(k, np.asarray(s)) for k, s in engine.state(t).items()]
                    for t in range(len(SHAPES))]


def _assert_same_bits(cuda, cpu, fmt, what=""):
    """Params and slots (codes with their absmax, or float32 state) bit for bit; then
    :func:`_blocks_seen` of each slot of param 0 (which cases the run did reach)."""
    (cuda_params, cuda_states), (cpu_params, cpu_states) = cuda, cpu
    assert len(cuda_params) == len(cpu_params), what
    for t, (a, b) in enumerate(zip(cuda_params[len(SHAPES):], cpu_params[len(SHAPES):])):
        for u, (x, y) in enumerate(zip(a, b)):  # eval's points and the kept y's
            np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8),
                                          err_msg=f"{what} eval {t} param {u}")
    for t, shape in enumerate(SHAPES):
        np.testing.assert_array_equal(cuda_params[t].view(np.uint8),
                                      cpu_params[t].view(np.uint8), err_msg=f"{what} param {t}")
        assert [k for k, _ in cuda_states[t]] == [k for k, _ in cpu_states[t]], what
        for (k, a), (_, b) in zip(cuda_states[t], cpu_states[t]):
            coded = np.prod(shape) >= MIN_SIZE and k not in (*FLOAT_SLOTS, *MASTER_SLOTS)
            kept = MASTER_SLOTS.get(k, np.float32) or cuda_params[t].dtype
            assert a.dtype == (np.uint8 if coded else kept), (what, t, k, a.dtype)
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8),
                                          err_msg=f"{what} param {t} slot {k}")
    assert cuda_states[0], what
    return [_blocks_seen(slot, fmt) for k, slot in cuda_states[0]
            if k not in (*FLOAT_SLOTS, *MASTER_SLOTS)]


def _blocks_seen(slot, fmt):
    """(param 0's first block's absmax is 0, the NaN's block's is NaN, every other finite)
    of the codes of ``slot``."""
    _, absmax = quant.codes_and_scales(slot, int(np.prod(SHAPES[0])), fmt)
    nan = NAN // quant.FORMATS[fmt].block
    return (bool(absmax[0] == 0), bool(np.isnan(absmax[nan])),
            bool(np.all(np.isfinite(np.delete(absmax, nan)))))


#: AdamW q8 beside bfloat16 params with a float32 master (float32 grads), with a remainder,
#: with Kahan summation (every family's kernels take these), and beside the storages only
#: Adam's family has quantized kernels for (quantized.ADAM_PAIRS): float16 params, and
#: float32 params with stochastic codes.
ADAMW = ("adamw", "torch", dict(learning_rate=1e-2, weight_decay=0.01))
PARAM_MODES = [(*ADAMW, ml_dtypes.bfloat16, dict(master_weights=True, grads=np.float32)),
               (*ADAMW, ml_dtypes.bfloat16, dict(master_weights="remainder")),
               (*ADAMW, ml_dtypes.bfloat16, dict(kahan_summation=True)),
               (*ADAMW, np.float16, {}),
               (*ADAMW, np.float32, dict(stochastic_rounding=True))]

#: Both formats of the first case; q8 of the second (q4's stochastic codes: schedule-free
#: AdamW's case below, the same loop between other tables); the
#: third in q8-bitsandbytes, whose decision points are not the midpoints (the variant
#: tests/test_quantized_peers.py steps on the CPU); :data:`PARAM_MODES` in q8, and AdamW
#: beside bfloat16 params rounded to nearest in q8.
RUNS = [(*CASES[0], "q8"), (*CASES[0], "q4"), (*CASES[1], "q8"),
        (*CASES[2], "q8-bitsandbytes"), *((*case, "q8") for case in PARAM_MODES),
        (*ADAMW, ml_dtypes.bfloat16, {}, "q8")]


def _run_id(run):
    name, _, _, dtype, options, fmt = run
    extra = [k if v is True else f"{k}={v}" for k, v in options.items() if k != "grads"]
    return "-".join([name, np.dtype(dtype).name, *extra, fmt])


def asked_storage(dtype, options, fmt) -> str:
    """The storage arguments (param, grad, format, mode: ``launch.storage_args`` of an
    entry point) of a quantized step of ``dtype`` params with constructor ``options``
    (``grads``: the grads' dtype, the param's unless given) in format ``fmt``."""
    mode = mode_of(options.get("master_weights", False),
                   options.get("stochastic_rounding", False),
                   options.get("kahan_summation", False))
    grad = options.get("grads", dtype)
    return Storage(np.dtype(dtype).name, np.dtype(grad).name, fmt, mode).template_args()


@pytest.mark.parametrize("name, convention, hp, dtype, options, fmt", RUNS,
                         ids=[_run_id(r) for r in RUNS])
def test_cuda_step_gives_the_cpu_bits(host_cuda, monkeypatch, name, convention, hp, dtype,
                                      options, fmt):
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)  # chunks of several blocks
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 96)  # 3 warps: idle ones at the end
    seen = _assert_same_bits(_run("cuda", name, convention, hp, dtype, options, fmt),
                             _run("cpu", name, convention, hp, dtype, options, fmt), fmt)
    assert all(all(case) for case in seen), seen  # a zero block, a NaN block, finite others
    launched = [n for n, _, _ in host_cuda.launches if n.startswith("adam_quantized<")]
    assert len(launched) == STEPS and len(host_cuda.launches) == 2 * STEPS  # float32 apart
    assert all(block == (96, 1, 1) for _, _, block in host_cuda.launches)
    # The mode the options select (float32 params with stochastic_rounding: MODE
    # STOCHASTIC, the codes rounded stochastically), and the grads' dtype.
    assert {launch.storage_args(n) for n in launched} == {
        asked_storage(dtype, options, fmt)}, launched


def _fullest(spec, convention):
    """The variant of ``spec`` with the most slots, in ``convention`` where it has one."""
    from cuda_host import compare

    def slots(v):
        return len(spec.slots(spec.flags(compare.full_hyper(spec, v), v.convention)))
    return max(compare.variants(spec), key=lambda v: (slots(v), v.convention == convention))


#: One optimizer of each elementwise family beside Adam's that has quantized kernels (LAMB's
#: and StableAdamW's, with their reductions: tests/test_cuda_quantized_reductions.py; Muon's
#: momentum pass: tests/test_cuda_muon.py).
FAMILIES = {s.kernel: s.name for s in reversed(list(REGISTRY.values()))
            if quantized.covers(s) and s.kernel != "adam" and s.reductions is None}
#: (param dtype, constructor options, the convention preferred, format): codes to nearest
#: beside float32 params; stochastic params and codes beside bfloat16 ones; q4's codes, two
#: to a byte, beside bfloat16 params rounded to nearest; q8 beside bfloat16 params with a
#: float32 master (float32 grads); q8 beside a bfloat16 param's remainder and beside its
#: Kahan compensation (one family each: :data:`ONE_FAMILY`).
FAMILY_RUNS = {"q8-float32": (np.float32, {}, "keras", "q8"),
               "q8-bfloat16-stochastic": (ml_dtypes.bfloat16, dict(stochastic_rounding=True),
                                          "torch", "q8"),
               "q4-bfloat16": (ml_dtypes.bfloat16, {}, "keras", "q4"),
               "q8-bfloat16-master": (ml_dtypes.bfloat16,
                                      dict(master_weights=True, grads=np.float32), "torch",
                                      "q8"),
               "q8-bfloat16-remainder": (ml_dtypes.bfloat16,
                                         dict(master_weights="remainder"), "keras", "q8"),
               "q8-bfloat16-kahan": (ml_dtypes.bfloat16, dict(kahan_summation=True),
                                     "torch", "q8")}
#: Runs that step one family, not one per count of slots: what they add is the param's own
#: load and store (a remainder's, a Kahan compensation's), outside the slot loop and the
#: same code for every family (Adam's family steps both above).
ONE_FAMILY = ("q8-bfloat16-remainder", "q8-bfloat16-kahan")


def _one_per_slot_count(families, convention, nth=0):
    """Of each count of slots of the families' fullest variants, the ``nth`` family by
    name (cyclically), so that runs of different ``nth`` step different families."""
    from cuda_host import compare
    by_count = {}
    for kernel, name in sorted(families):
        spec = REGISTRY[name]
        v = _fullest(spec, convention)
        count = len(spec.slots(spec.flags(compare.full_hyper(spec, v), v.convention)))
        by_count.setdefault(count, []).append((kernel, name))
    assert set(by_count) >= {1, 2, 3, 4}, by_count
    return sorted(members[nth % len(members)] for members in by_count.values())


@pytest.mark.parametrize("run", FAMILY_RUNS)
def test_every_family_gives_the_cpu_bits(host_cuda, monkeypatch, run):
    """Each family's rule over quantized codes, in its variant with the most slots, as the
    Adam cases above: params, codes and absmax against the CPU backend's, over the same
    blocks (a zero one, a NaN one, partial ones, a param keeping float32 state).

    Every family beside float32 params in q8. The rule is the same C++ in every run (it
    computes in float32 for bfloat16 params); what the other runs add is code of the
    shared loop (kernels/quantized.cuh, and the element's trip of kernels/common.cuh) that
    is the same for every family but for the slots it loops over (one unrolled pass per
    slot, 1 to 4), so one family per count of slots runs all of it, and each run takes
    another family of a count where the count has several:

    - bfloat16 params with stochastic rounding: the param's load and stochastic store, and
      each slot's stochastic codes, keyed by its index (slots 0 to 3);
    - q4 beside bfloat16 params rounded to nearest: q4's decode of a nibble, its store of
      two codes to a byte (a lane owns 4 elements, 2 bytes) and its 16-entry searches,
      per slot; and the param's nearest store, which is outside the slot loop and the
      same for every family (Adam's family, a kernel of its own, steps q4 beside float32
      params above);
    - q8 beside bfloat16 params with a float32 master and float32 grads: the master slot's
      address, load and store in the loop, the param rounded from the master;
    - q8 beside a bfloat16 param's remainder, and beside its Kahan compensation: one family
      each (:data:`ONE_FAMILY`).

    Each family costs a CPU compile of its variant here, the suite's time (2 to 4 CPU s
    cold)."""
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 96)
    dtype, options, convention, fmt = FAMILY_RUNS[run]
    assert set(FAMILIES) == set(quantized.FAMILIES) - {"adam", "lamb", "stableadamw",
                                                        *quantized.OUTPUTS}
    seen = {}
    families = sorted(FAMILIES.items())
    nth = list(FAMILY_RUNS).index(run) - 1
    if run in ONE_FAMILY:  # the nth family by name: Adan, AdEMAMix
        families = [families[nth % len(families)]]
    elif run != "q8-float32":  # the nth family of each count in the nth of these runs
        families = _one_per_slot_count(families, convention, nth)
    for kernel, name in families:
        variant = _fullest(REGISTRY[name], convention)
        host_cuda.launches.clear()
        got = _run("cuda", name, variant.convention, variant.hp, dtype, options, fmt)
        wanted = _run("cpu", name, variant.convention, variant.hp, dtype, options, fmt)
        seen[name] = _assert_same_bits(got, wanted, fmt, what=f"{name} {variant.id()}")
        launched = [n for n, _, _ in host_cuda.launches
                    if n.startswith(f"{quantized.family(kernel)}<")]
        assert len(launched) == STEPS, (name, host_cuda.launches)
        assert {launch.storage_args(n) for n in launched} == {
            asked_storage(dtype, options, fmt)}, launched
    # Every family reached a NaN block and kept the others finite; the zero block (absmax
    # 0) in every family whose state starts at 0 (Adagrad's accumulator starts at
    # initial_accumulator_value, ASGD's average at the param).
    assert all(any(c[1] for c in cases) and all(c[2] for c in cases)
               for cases in seen.values()), seen
    assert {n for n, cases in seen.items() if not any(c[0] for c in cases)} <= {"adagrad",
                                                                               "asgd"}, seen


#: Schedule-free beside quantized codes: AdamW (z and y float32 beside v's codes) and SGD
#: (every slot float32). Beside float32 params, in q8 and q4 and SGD in both conventions,
#: a step after eval() and train() (the switch's kernel, y kept float32): the variants
#: tests/test_schedulefree_quantized.py steps on the CPU backend, so the suite compiles
#: them once. Beside bfloat16 params steps only (eval() is refused there on every backend:
#: z is float32 beside the codes and these kernels keep no master,
#: fusedopt/engine/modes.py): AdamW's param and codes rounded stochastically, in q4; SGD's
#: param to nearest.
SF_HP = dict(learning_rate=1e-2, weight_decay=0.1)
SCHEDULE_FREE = [("schedulefreeadamw", "torch", SF_HP, np.float32, {}, "q8"),
                 ("schedulefreesgd", "keras", SF_HP, np.float32, {}, "q8"),
                 ("schedulefreeadamw", "keras", SF_HP, np.float32, {}, "q4"),
                 ("schedulefreesgd", "keras", SF_HP, np.float32, {}, "q4"),
                 ("schedulefreesgd", "torch", SF_HP, np.float32, {}, "q8"),
                 ("schedulefreeadamw", "torch", SF_HP, ml_dtypes.bfloat16,
                  dict(stochastic_rounding=True), "q4"),
                 ("schedulefreesgd", "keras", SF_HP, ml_dtypes.bfloat16, {}, "q8")]


@pytest.mark.parametrize("name, convention, hp, dtype, options, fmt", SCHEDULE_FREE,
                         ids=[f"{_run_id(r)}-{r[1]}" for r in SCHEDULE_FREE])
def test_schedule_free_gives_the_cpu_bits(host_cuda, monkeypatch, name, convention, hp,
                                          dtype, options, fmt):
    """Params, codes and absmax, z, v and the points eval() gives (x and the kept y) against
    the CPU backend's, over the blocks of the runs above; the switch runs the quantized
    kernel on the param it keeps quantized state for (5000 elements, above its default
    min_quantized_size) and the float one on the others."""
    monkeypatch.setattr(config, "CUDA_CHUNK", 1024)
    monkeypatch.setattr(config, "THREADS_PER_BLOCK", 96)
    switches = dtype == np.float32
    switch_after = 0 if switches else None
    got = _run("cuda", name, convention, hp, dtype, options, fmt, switch_after=switch_after)
    wanted = _run("cpu", name, convention, hp, dtype, options, fmt, switch_after=switch_after)
    seen = _assert_same_bits(got, wanted, fmt, what=name)
    assert len(got[0]) == len(SHAPES) + 2 * switches
    assert len(seen) == (name == "schedulefreeadamw")
    assert all(all(case) for case in seen), seen
    assert [k for k, _ in got[1][0]] == (["z", "v"] if seen else ["z"])
    launched = [n for n, _, _ in host_cuda.launches if n.startswith("schedulefree_quantized<")]
    assert len(launched) == STEPS + 2 * switches, host_cuda.launches  # and eval, train
    assert sum(", 0, 0, 1, 1>" in n for n in launched) == switches, launched  # to eval
    assert {launch.storage_args(n) for n in launched} == {
        asked_storage(dtype, options, fmt)}, launched


#: What every family's quantized kernels take (Adam's take more: ADAM_PAIRS).
EVERY_FAMILY = ("kernels take float32 params, bfloat16 params, bfloat16 params with "
                "stochastic_rounding=True, bfloat16 params with master_weights=True, "
                "bfloat16 params with master_weights='remainder', bfloat16 params with "
                "kahan_summation=True\\)")
REFUSED = [  # (optimizer, constructor options, what the message names); bfloat16 params
    ("lamb", dict(float16=True), f"float16 params has no CUDA kernel yet.*{EVERY_FAMILY}"),
    ("adagrad", dict(float16=True), f"float16 params has no CUDA kernel yet.*{EVERY_FAMILY}"),
    ("adagrad", dict(float16=True, master_weights=True),
     f"float16 params with master_weights=True.*{EVERY_FAMILY}"),
    ("rmsprop", dict(float16=True, kahan_summation=True),
     f"float16 params with kahan_summation=True.*{EVERY_FAMILY}"),
    ("adam", dict(float16=True, master_weights=True),
     "float16 params with master_weights=True.*bfloat16 params with master_weights='remainder'"
     ".*float32 params with stochastic_rounding=True.*float16 params\\)"),
    ("muon", {}, "kernels take float32 params\\)"),  # its momentum pass: float32 only
]


@pytest.mark.parametrize("fmt", quant.QUANTIZED)
@pytest.mark.parametrize("name, options, named", REFUSED, ids=[f"{r[0]}-{r[2][:10]}"
                                                               for r in REFUSED])
def test_a_step_without_a_kernel_is_refused_and_changes_nothing(cuda_cache_dir, name,
                                                                options, named, fmt):
    from cuda_host import HostRuntime

    from fusedopt.backends.cuda import runtime
    rng = np.random.default_rng(1)
    options = dict(options)
    dtype = np.float16 if options.pop("float16", False) else ml_dtypes.bfloat16
    p = rng.standard_normal(1000).astype(dtype)
    before = p.copy()
    previous = runtime.install(HostRuntime(cuda_cache_dir / "host"))
    try:
        engine = Engine(REGISTRY[name], "keras", backend="cuda", state_dtype=fmt,
                        min_quantized_size=0, **options)
        engine.add_group(dict(learning_rate=0.1))
        engine.add_params([p])
        states = [np.asarray(s).copy() for s in engine.states[0]]
        with pytest.raises(ValueError, match=rf"{fmt}.*{named}.*backend='cpu'") as info:
            engine.step([np.ones(1000, p.dtype)])
        assert "no CUDA kernel yet" in str(info.value)
    finally:
        runtime.install(previous)
    assert np.array_equal(p.view(np.uint16), before.view(np.uint16))  # the param unchanged
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(states, engine.states[0]))


def test_every_quantized_entry_point_is_a_gate_entry_point():
    """What the runtime can request of a quantized family is what the gates compile."""
    for spec in REGISTRY.values():
        for _, _, entry in quantized.entries(spec):
            assert entry in launch.all_entry_points()[quantized.family(spec.kernel)]
        for entry in quantized.reduce_entries(spec):  # LAMB's and StableAdamW's reductions
            assert entry in launch.all_entry_points()[quantized.family(spec.reduce_kernel)]
    assert {quantized.family(s.kernel) for s in REGISTRY.values() if quantized.covers(s)}
    assert {"lamb_reduce_quantized", "stableadamw_reduce_quantized"} <= set(
        launch.all_entry_points())

    for spec in REGISTRY.values():  # a matrix transform's momentum pass (Muon's)
        part = quantized.stepped_by(spec)
        if part is not spec and quantized.covers(part):
            names = launch.all_entry_points()[quantized.family(part.kernel)]
            assert {e for _, _, e in quantized.entries(part)} == set(names)
