"""Compile kernel source with NVRTC on a machine without a GPU: the compile gate.

NVRTC compiles for any architecture without a device, so the exact text and options that
``cupy.RawModule`` hands to NVRTC on a user's GPU (fusedopt/backends/cuda/source.py) are compiled
here for every architecture in ``config.GATE_ARCHS``. The result keeps the program log
(warnings and ptxas' per-kernel resource lines), the cubin (for the machine-code gate in
fusedopt/backends/cuda/sass.py), the PTX it was assembled from (for the denormal gate in
tests/test_denormals.py) and the mangled name of every entry point.

Needs ``cuda-bindings`` (the ``cudacheck`` extra); imported only by the gates and tools.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ... import config
from . import launch, source

#: ptxas prints registers, stack frame and spills per kernel into the program log.
PTXAS_VERBOSE = "--ptxas-options=-v"

_WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)
_ERROR = re.compile(r"\berror\b", re.IGNORECASE)

#: Bump when the cached artifact layout changes.
_CACHE_FORMAT = 2


@dataclass(frozen=True)
class Compiled:
    """What NVRTC made of one source text for one architecture."""

    label: str                      # e.g. "adam.cu for sm_80", for messages
    arch: str
    ok: bool                        # nvrtcCompileProgram succeeded
    log: str
    cubin: bytes = b""
    ptx: str = ""
    lowered: dict[str, str] = field(default_factory=dict)  # name expression -> mangled name

    def problems(self) -> list[str]:
        """Why this compile fails the gate: errors, any warning, entry points not emitted."""
        found = []
        if not self.ok:
            errors = [line for line in self.log.splitlines() if _ERROR.search(line)]
            found.append(f"{self.label} does not compile:\n  " + "\n  ".join(errors or [self.log]))
        warnings = [line for line in self.log.splitlines() if _WARNING.search(line)]
        if warnings:
            found.append(f"{self.label} compiles with warnings (the gate allows none):\n  "
                         + "\n  ".join(warnings))
        if self.ok:
            missing = [name for name, mangled in self.lowered.items() if not mangled]
            if missing:
                found.append(f"{self.label} has no kernel for {', '.join(missing)}: check the "
                             "template's name and arguments against fusedopt/algorithms/registry.py")
        return found


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc
    _, major, minor = nvrtc.nvrtcVersion()
    return f"{major}.{minor}"


def library_paths() -> list[str]:
    """The NVRTC shared libraries this process has loaded (after a first NVRTC call).

    Read from /proc/self/maps, so it names the file the dynamic loader really opened, which
    must be the nvidia-cuda-nvrtc wheel's: a system toolkit found first would compile the
    gates with another NVRTC than the one pyproject.toml pins.
    """
    nvrtc_version()  # loads the library if nothing has yet
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if line.strip() else ""
            if "libnvrtc" in Path(path).name and path not in found:
                found.append(path)
    return found


def gate_options(arch: str) -> tuple[str, ...]:
    """The runtime's NVRTC options, the header folder CuPy adds, a real architecture and
    ptxas' resource report."""
    includes = tuple(f"-I{folder}" for folder in source.include_dirs())
    return (*source.options(), *includes, f"--gpu-architecture={arch}", PTXAS_VERBOSE)


def _check(result, what: str) -> None:
    from cuda.bindings import nvrtc
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, message = nvrtc.nvrtcGetErrorString(result)
        raise RuntimeError(f"NVRTC {what} failed: {message.decode()}")


def _compile_now(text: str, name_expressions, arch: str, filename: str) -> Compiled:
    from cuda.bindings import nvrtc

    label = f"{filename} for {arch}"
    err, prog = nvrtc.nvrtcCreateProgram(text.encode(), filename.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        for name in name_expressions:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, name.encode())
            _check(err, f"nvrtcAddNameExpression({name!r})")
        options = [o.encode() for o in gate_options(arch)]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        _check(err, "nvrtcGetProgramLogSize")
        log = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, log)[0], "nvrtcGetProgramLog")
        log_text = log.rstrip(b"\0").decode(errors="replace").strip()
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return Compiled(label, arch, False, log_text)
        err, size = nvrtc.nvrtcGetCUBINSize(prog)
        _check(err, "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin)[0], "nvrtcGetCUBIN")
        err, size = nvrtc.nvrtcGetPTXSize(prog)
        _check(err, "nvrtcGetPTXSize")
        ptx = b" " * size
        _check(nvrtc.nvrtcGetPTX(prog, ptx)[0], "nvrtcGetPTX")
        lowered = {}
        for name in name_expressions:
            err, mangled = nvrtc.nvrtcGetLoweredName(prog, name.encode())
            ok = err == nvrtc.nvrtcResult.NVRTC_SUCCESS and mangled
            lowered[name] = mangled.decode() if ok else ""
        return Compiled(label, arch, True, log_text, cubin, ptx.rstrip(b"\0").decode(),
                        lowered)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _cache_key(text: str, name_expressions, arch: str, filename: str) -> str:
    blob = json.dumps([_CACHE_FORMAT, nvrtc_version(), text, list(name_expressions), arch,
                       filename, gate_options(arch)])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _load(folder: Path, label: str, arch: str) -> Compiled | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        cubin = (folder / "kernel.cubin").read_bytes() if meta["ok"] else b""
        ptx = (folder / "kernel.ptx").read_text() if meta["ok"] else ""
    except (OSError, ValueError, KeyError):
        return None
    return Compiled(label, arch, meta["ok"], meta["log"], cubin, ptx, meta["lowered"])


def _store(folder: Path, compiled: Compiled) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if compiled.ok:
        write_atomically(folder / "kernel.cubin", compiled.cubin)
        write_atomically(folder / "kernel.ptx", compiled.ptx.encode())
    # meta.json last: its presence marks a complete entry.
    write_atomically(folder / "meta.json", json.dumps(
        {"ok": compiled.ok, "log": compiled.log, "lowered": compiled.lowered}).encode())


def write_atomically(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or what it held before, never a part: processes sharing a
    cache may write and read one entry at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def compile_source(text: str, name_expressions, arch: str, *, filename: str = "kernel.cu",
                   cache_dir: Path | None = None) -> Compiled:
    """Compile ``text`` for ``arch`` (e.g. "sm_80"), adding every name expression.

    With ``cache_dir`` the result is kept on disk under a hash of everything that can change
    it (text, names, options, architecture, NVRTC version), so an unchanged kernel is
    compiled once, not once per test session.
    """
    if cache_dir is None:
        return _compile_now(text, name_expressions, arch, filename)
    folder = Path(cache_dir) / _cache_key(text, name_expressions, arch, filename)
    cached = _load(folder, f"{filename} for {arch}", arch)
    if cached is not None:
        return cached
    compiled = _compile_now(text, name_expressions, arch, filename)
    _store(folder, compiled)
    return compiled


def compile_family(family: str, arch: str, *, cache_dir: Path | None = None) -> Compiled:
    """kernels/<family>.cu with the entry points the gates compile for ``arch``
    (:func:`gate_names`: for ``config.GATE_FULL_ARCH``, every one the runtime can request)."""
    return compile_source(source.source(family), gate_names(family, arch), arch,
                          filename=f"{family}.cu", cache_dir=cache_dir)


def gate_names(family: str, arch: str) -> tuple[str, ...]:
    """The entry points of kernels/<family>.cu the gates compile for ``arch``: every one
    for ``config.GATE_FULL_ARCH``; for the others, one flag combination of each kernel
    and sampled storage (``launch.sampled_entry_points``: :func:`one_flag_set_each`)."""
    if arch == config.GATE_FULL_ARCH:
        return launch.name_expressions(family)
    return one_flag_set_each(launch.sampled_entry_points()[family])


def one_flag_set_each(names) -> tuple[str, ...]:
    """One name of each (kernel, storage) of ``names``, the flag combinations chosen so
    that every value of every flag appears in the sample where the storages allow (each
    storage takes the combination with the most values not yet taken); names without a
    storage are all kept.

    Why one is enough for a second architecture: flags are template arguments that switch
    branches of the rule, which is the same C++ on every architecture, and the full
    architecture compiles every combination; what differs between architectures is the
    code of the params' and state's types (16-bit conversions, vector loads and stores),
    which every sampled storage still compiles."""
    combos: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {}
    kept = []
    for name in names:
        storage = launch.storage_args(name)
        if not storage:
            kept.append(name)
            continue
        args = name.split("<", 1)[1].rstrip(">").split(", ")
        combos.setdefault((name.split("<", 1)[0], storage), []).append((name, tuple(args[4:])))
    taken: dict[str, set] = {}
    for (kernel, _), options in combos.items():
        seen = taken.setdefault(kernel, set())
        name, flags = max(options, key=lambda o: len(set(enumerate(o[1])) - seen))
        seen |= set(enumerate(flags))
        kept.append(name)
    order = {name: i for i, name in enumerate(names)}
    return tuple(sorted(kept, key=order.__getitem__))


def gate_matrix() -> list[tuple[str, str]]:
    """Every (family, architecture) the gates compile, in a stable order."""
    return [(family, arch) for family in launch.all_entry_points() for arch in config.GATE_ARCHS]


def _compile_into(job) -> str:
    family, arch, cache_dir = job
    return compile_family(family, arch, cache_dir=Path(cache_dir)).label


def compile_all(cache_dir: Path, workers: int) -> None:
    """Every (family, architecture) of :func:`gate_matrix` into ``cache_dir``, ``workers``
    compiles at a time (NVRTC compiles one program on one core), the largest first, so
    the gates then read every result from the cache."""
    from concurrent.futures import ProcessPoolExecutor
    jobs = sorted(((f, a, str(cache_dir)) for f, a in gate_matrix()),
                  key=lambda job: -len(gate_names(job[0], job[1])))
    if workers <= 1:
        for job in jobs:
            _compile_into(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_compile_into, jobs))
