"""The wheel carries kernels/, and an installed fusedopt finds them without the source tree."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("hatchling")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(out)], check=True, timeout=300)
    return next(out.glob("fusedopt-*.whl"))


def test_wheel_contains_every_kernel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (ROOT / "kernels").iterdir():
        if path.suffix in (".cu", ".cuh"):
            assert f"fusedopt/kernels/{path.name}" in names


def test_installed_copy_reads_its_own_kernels(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    code = ("from fusedopt.backends.cuda import source; d = source.kernel_dir(); "
            "assert 'adam' in source.source('adam'); print(d)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(target)
