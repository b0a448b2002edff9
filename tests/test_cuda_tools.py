"""The CUDA gates run the NVIDIA tools of this environment, never a toolkit found elsewhere.

pyproject.toml's cudacheck extra pins NVRTC, cuobjdump and nvdisasm as wheels. A machine
with a CUDA toolkit installed must not satisfy the gates with its own copies (that hid a
missing wheel once), and a missing wheel must fail with the pip command that installs it.
"""

import sys
from pathlib import Path

import pytest

from fusedopt.backends.cuda import nvrtc, sass


def _inside_environment(path) -> bool:
    return Path(path).resolve().is_relative_to(Path(sys.prefix).resolve())


@pytest.mark.parametrize("name", sorted(sass.TOOL_PACKAGES))
def test_gate_tool_lives_in_this_environment(name):
    path = sass.tool(name)
    assert _inside_environment(path), f"{name} resolved to {path}, outside {sys.prefix}"


def test_nvrtc_library_lives_in_this_environment():
    pytest.importorskip("cuda.bindings.nvrtc")
    paths = nvrtc.library_paths()
    assert paths, "no libnvrtc is mapped after an NVRTC call"
    outside = [p for p in paths if not _inside_environment(p)]
    assert not outside, f"NVRTC loaded from outside {sys.prefix}: {outside}"


def test_missing_tool_names_the_package_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sass, "environment_dirs", lambda: [tmp_path])
    with pytest.raises(FileNotFoundError, match="pip install nvidia-cuda-nvdisasm"):
        sass.tool("nvdisasm")


def test_a_toolkit_on_path_is_not_used(monkeypatch, tmp_path):
    """A cuobjdump on PATH or under CUDA_HOME is ignored when the environment has none."""
    fake = tmp_path / "bin" / "cuobjdump"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(sass, "environment_dirs", lambda: [tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="nvidia-cuda-cuobjdump"):
        sass.tool("cuobjdump")
