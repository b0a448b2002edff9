"""The machine-code gate: per entry point and architecture, from NVRTC's cubin and ptxas' report.

No spills, no stack frame, no local-memory instruction, registers within
``config.REGISTER_BUDGET``, and 128-bit global loads and stores in every optimizer entry
point (fusedopt/backends/cuda/sass.py says why each matters).
"""

import pytest
from cuda_host import probes

from fusedopt import config
from fusedopt.backends.cuda import nvrtc, sass, source

MATRIX = nvrtc.gate_matrix()

#: Entry points that update params: each must move 16 bytes per access, in as many accesses
#: as its storage needs.
OPTIMIZER_ENTRIES = sass.optimizer_entries()
ACCESSES = sass.vector_accesses()
#: Entry points of the reduction phase: each loads 16 bytes per access.
REDUCTION_ENTRIES = sass.reduction_entries()


def _reports(compiled, cuda_cache_dir):
    if compiled.problems():
        pytest.fail("the compile gate fails first:\n" + "\n".join(compiled.problems()))
    return sass.inspect(compiled, cuda_cache_dir / "sass")


@pytest.mark.parametrize("family, arch", MATRIX, ids=[f"{f}-{a}" for f, a in MATRIX])
def test_machine_code(nvrtc_compiled, cuda_cache_dir, family, arch):
    reports = _reports(nvrtc_compiled(family, arch), cuda_cache_dir)
    problems = [p for name, report in sorted(reports.items())
                for p in report.problems(vectors=name in OPTIMIZER_ENTRIES,
                                         accesses=ACCESSES.get(name))]
    problems += [f"{name} on {arch} has no 128-bit global load: its main loop must read "
                 "16 bytes per access (fusedopt::Operand in kernels/common.cuh)"
                 for name, report in sorted(reports.items())
                 if name in REDUCTION_ENTRIES and not report.loads_128]
    assert not problems, "\n".join(problems)


def test_vector_width_is_checked_on_every_optimizer_entry(nvrtc_compiled, cuda_cache_dir):
    """The gate actually saw the 128-bit instructions it requires (not a parser that finds none
    and an exemption that hides it)."""
    family, arch = MATRIX[0]
    reports = _reports(nvrtc_compiled(family, arch), cuda_cache_dir)
    checked = [r for n, r in reports.items() if n in OPTIMIZER_ENTRIES]
    assert checked and all(r.loads_128 >= 2 and r.stores_128 >= 1 for r in checked)
    assert all(r.registers > 0 for r in reports.values())


# --- the gate fails when it should ------------------------------------------------------------

def _probe(text, names, cuda_cache_dir):
    pytest.importorskip("cuda.bindings.nvrtc")
    compiled = nvrtc.compile_source(text, names, config.GATE_ARCHS[0], filename="probe.cu",
                                    cache_dir=cuda_cache_dir / "nvrtc")
    assert not compiled.problems(), compiled.problems()
    return sass.inspect(compiled, cuda_cache_dir / "sass")


def test_scalar_fallback_fails_the_gate(cuda_cache_dir):
    family, name = probes.float32_entry()
    report = _probe(probes.scalar_loads(source.source(family)), [name], cuda_cache_dir)[name]
    assert report.loads_128 == 0 and report.stores_128 == 0
    assert any("128-bit" in p for p in report.problems())


def test_stack_and_local_memory_fail_the_gate(cuda_cache_dir):
    code, name = probes.stack_kernel()
    report = _probe(code, [name], cuda_cache_dir)[name]
    problems = report.problems(vectors=False)
    assert report.stack > 0 and report.local_accesses > 0
    assert any("stack frame" in p for p in problems)
    assert any("local-memory" in p for p in problems)


def test_sixteen_bit_entries_move_eight_elements_per_access():
    """The 16-bit clause, as counted: a bf16 param with fp32 m and v is 1 access for the
    param, 1 for the grad, 2 for each slot (loads 6, stores 5); every storage is covered."""
    from fusedopt.memory.storage import all_storages
    adam = next(s for s in __import__("fusedopt").REGISTRY.values() if s.name == "adam")
    flags = adam.flags(adam.defaults(), "keras")
    by_storage = {str(st): ACCESSES[adam.entry(st, flags)] for st in all_storages()}
    assert by_storage["bfloat16 params, bfloat16 grads, float32 state"] == (6, 5)
    assert by_storage["bfloat16 params, bfloat16 grads, bfloat16 state"] == (4, 3)
    assert by_storage["bfloat16 params, float32 grads, float32 state, remainder"] == (8, 6)
    assert by_storage["bfloat16 params, bfloat16 grads, float32 state, master"] == (7, 7)
    assert by_storage["float32 params, float32 grads, float32 state"] == (4, 3)
    assert len(by_storage) == len(all_storages())
    short = sass.KernelReport("adam<__nv_bfloat16, __nv_bfloat16, float, 0, 0, 0>", "sm_80",
                              40, 0, 0, 0, 0, loads_128=5, stores_128=5)
    assert any("fewer than the 6 and 5" in p for p in short.problems(accesses=(6, 5)))


def test_register_budget_is_enforced():
    report = sass.KernelReport("k<float>", "sm_80", registers=config.REGISTER_BUDGET + 1,
                               stack=0, spill_stores=0, spill_loads=0, local_accesses=0,
                               loads_128=1, stores_128=1)
    assert any("registers per thread" in p for p in report.problems())
    assert not sass.KernelReport("k<float>", "sm_80", config.REGISTER_BUDGET, 0, 0, 0, 0, 1,
                                 1).problems()
    wide = config.REGISTER_BUDGET_FLOAT64
    assert not sass.KernelReport("k<double, double>", "sm_80", wide, 0, 0, 0, 0, 1, 1).problems()
    assert any("REGISTER_BUDGET_FLOAT64" in p for p in sass.KernelReport(
        "k<double, double>", "sm_80", wide + 1, 0, 0, 0, 0, 1, 1).problems())



def test_only_seven_array_entries_get_their_budget():
    """Adan with a master (param, grad, four slots, master) and the traffic ceiling of its
    bytes have REGISTER_BUDGET_SEVEN_ARRAYS; its plain variant (six arrays), AdEMAMix's
    with a master and the ceiling of three slots with a remainder (six) keep the float
    one."""
    seven = "adan<__nv_bfloat16, float, float, 1, 2>"
    for name in (seven, "traffic<__nv_bfloat16, __nv_bfloat16, float, 2, 4>"):
        assert sass.register_budget(name) == (config.REGISTER_BUDGET_SEVEN_ARRAYS,
                                              "REGISTER_BUDGET_SEVEN_ARRAYS")
    for six in ("adan<__nv_bfloat16, __nv_bfloat16, float, 0, 2>",
                "ademamix<__nv_bfloat16, float, float, 1, 2>",
                "traffic<__nv_bfloat16, __nv_bfloat16, float, 2, 3>"):
        assert sass.register_budget(six) == (config.REGISTER_BUDGET, "REGISTER_BUDGET")
    over = config.REGISTER_BUDGET_SEVEN_ARRAYS + 1
    assert any("REGISTER_BUDGET_SEVEN_ARRAYS" in p for p in sass.KernelReport(
        seven, "sm_80", over, 0, 0, 0, 0, 1, 1).problems())


def test_ptxas_report_is_parsed():
    log = ("ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'\n"
           "ptxas info    : Function properties for _Z1kv\n"
           "ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 71 registers, used 0 barriers, 352 bytes cmem[0]\n")
    assert sass.ptxas_resources(log) == {
        "_Z1kv": {"stack": 8, "spill_stores": 4, "spill_loads": 12, "registers": 71}}


def test_kernel_table_replaces_only_between_its_markers():
    from fusedopt.tools import kernel_table as report
    text = f"intro\n{report.START}\nold table\n{report.END}\noutro\n"
    assert report.replace_table(text, "new") == f"intro\n{report.START}\nnew\n{report.END}\noutro\n"
    with pytest.raises(ValueError, match="markers are missing"):
        report.replace_table("no markers", "new")


def test_quantized_entries_keeping_a_master_slot_get_their_budget():
    """Adam's quantized entry points with a master, a remainder or a Kahan compensation
    have REGISTER_BUDGET_QUANTIZED_MASTER; rounded to nearest without one, the quantized
    budget."""
    from fusedopt.memory.storage import MODE_IDS
    for mode in ("master", "remainder", "kahan"):
        name = f"adam_quantized<__nv_bfloat16, float, fusedopt::Q8, {MODE_IDS[mode]}, 0, 1>"
        assert sass.register_budget(name) == (config.REGISTER_BUDGET_QUANTIZED_MASTER,
                                              "REGISTER_BUDGET_QUANTIZED_MASTER")
    assert sass.register_budget("adam_quantized<__half, __half, fusedopt::Q8, 0, 0, 1>") == (
        config.REGISTER_BUDGET_QUANTIZED, "REGISTER_BUDGET_QUANTIZED")
