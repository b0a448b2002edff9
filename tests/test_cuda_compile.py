"""The compile gate: every entry point the runtime can request compiles with NVRTC, cleanly.

For every kernel family in ``fusedopt.backends.cuda.launch.all_entry_points()`` (driven by the
registry) and every architecture in ``fusedopt.config.GATE_ARCHS``, the exact source text
and options ``cupy.RawModule`` uses are compiled with NVRTC, with every name expression
added; the gate fails on an error, on any warning, and on an entry point with no kernel.
"""

from pathlib import Path

import pytest
from cuda_host import probes

from fusedopt import config
from fusedopt.backends.cuda import launch, nvrtc, source

MATRIX = nvrtc.gate_matrix()


@pytest.mark.parametrize("family, arch", MATRIX, ids=[f"{f}-{a}" for f, a in MATRIX])
def test_family_compiles_cleanly(nvrtc_compiled, family, arch):
    compiled = nvrtc_compiled(family, arch)
    assert not compiled.problems(), "\n".join(compiled.problems())
    assert sorted(compiled.lowered) == sorted(nvrtc.gate_names(family, arch))


def test_every_gate_arch_is_a_real_architecture():
    assert config.GATE_ARCHS and all(a.startswith("sm_") for a in config.GATE_ARCHS)
    assert {"sm_80", "sm_90"} <= set(config.GATE_ARCHS)
    assert config.GATE_FULL_ARCH in config.GATE_ARCHS


def test_one_arch_compiles_every_entry_point_and_the_others_every_mode():
    from fusedopt.memory.storage import MODE_IDS, all_storages
    for family, names in launch.all_entry_points().items():
        assert nvrtc.gate_names(family, config.GATE_FULL_ARCH) == names
        for arch in config.GATE_ARCHS:
            sampled = nvrtc.gate_names(family, arch)
            assert sampled and set(sampled) <= set(names), (family, arch)
    storages = launch.sampled_storages()
    assert {st.mode for st in storages} == set(MODE_IDS)
    assert {st.param for st in storages} == {"float32", "float64", "float16", "bfloat16"}
    args = {st.template_args() for st in storages}
    adam_80 = nvrtc.gate_names("adam", "sm_80")
    assert {launch.storage_args(n) for n in adam_80} == args  # every sampled storage, once
    assert len(adam_80) == len(args)
    assert len(launch.name_expressions("adam")) > len(all_storages())  # several flag sets


def _flag_values(names):
    """(kernel, flag position, value) of each name with a storage."""
    found = set()
    for name in names:
        if launch.storage_args(name):
            kernel, args = name.split("<", 1)
            found |= {(kernel, i, v) for i, v in enumerate(args.rstrip(">").split(", ")[4:])}
    return found


def test_the_second_arch_compiles_every_flag_value_and_every_storageless_entry():
    """The sample takes one flag combination per kernel and storage: across the storages,
    every value of every flag is still compiled for sm_80."""
    for family, names in launch.all_entry_points().items():
        sampled = nvrtc.gate_names(family, "sm_80")
        assert _flag_values(sampled) == _flag_values(names), family
        assert {n for n in names if not launch.storage_args(n)} <= set(sampled), family
        per_storage = {(n.split("<", 1)[0], launch.storage_args(n)) for n in sampled
                       if launch.storage_args(n)}
        assert len(per_storage) == sum(1 for n in sampled if launch.storage_args(n)), family


# --- the gate fails when it should ------------------------------------------------------------

def _compile_probe(text, name, cuda_cache_dir):
    pytest.importorskip("cuda.bindings.nvrtc")
    return nvrtc.compile_source(text, [name], config.GATE_ARCHS[0], filename="probe.cu",
                                cache_dir=cuda_cache_dir / "nvrtc")


def test_syntax_error_fails_the_gate(cuda_cache_dir):
    family, name = probes.float32_entry()
    compiled = _compile_probe(probes.syntax_error(source.source(family)), name, cuda_cache_dir)
    assert not compiled.ok
    assert any("does not compile" in p for p in compiled.problems())


def test_warning_fails_the_gate(cuda_cache_dir):
    family, name = probes.float32_entry()
    compiled = _compile_probe(probes.warning(source.source(family)), name, cuda_cache_dir)
    assert compiled.ok, compiled.log
    problems = compiled.problems()
    assert len(problems) == 1 and "warnings" in problems[0] and "unused" in problems[0]


class _Captured(Exception):
    pass


def test_gate_finds_the_16bit_headers_where_cupy_does(monkeypatch):
    """cuda_bf16.h and cuda_fp16.h come from the folder ``cupy.RawModule`` adds with -I
    (the nvidia-cuda-runtime wheel's include folder): the gate adds the same one."""
    pytest.importorskip("cupy", reason="the compile gate needs CuPy (the cudacheck extra)")
    import cupy._core.core as core
    import cupy.cuda.compiler as compiler

    seen = {}

    def capture(source_text, options=(), **kwargs):
        seen["options"] = options
        raise _Captured

    monkeypatch.setattr(compiler, "_compile_module_with_cache", capture)
    with pytest.raises(_Captured):  # CuPy's RawModule path, stopped before it needs a GPU
        core.compile_with_cache(source.source("adam"), options=source.options(),
                                prepend_cupy_headers=False)
    includes = {f"-I{folder}" for folder in source.include_dirs()}
    assert includes <= set(seen["options"]), (includes, seen["options"])
    assert includes <= set(nvrtc.gate_options("sm_80"))
    assert all(Path(folder, "cuda_bf16.h").is_file() for folder in source.include_dirs())
