"""Read the machine code NVRTC produced: the machine-code gate.

Per entry point (a name expression such as ``adam<float, 0, 1>``), from ptxas' resource
report in the program log and from the SASS that ``cuobjdump -sass`` prints for the cubin:

- registers per thread, within ``config.REGISTER_BUDGET`` (occupancy) and small enough
  that a block of ``config.THREADS_PER_BLOCK`` threads can launch at all;
- zero stack frame, zero spill stores and loads, and no local-memory instruction
  (``LDL``/``STL``): local memory lives in DRAM and would add traffic to a kernel whose
  whole cost is traffic;
- at least one 128-bit global load (``LDG.E.128``) and store (``STG.E.128``): the main
  loop moves 16 bytes per access; a kernel that fell back to scalar loads reads the same
  bytes in four times as many transactions;
- for optimizer entries, at least as many 128-bit loads and stores as one vector step of
  its storage needs (:func:`vector_accesses`): 8 elements of a 16-bit operand in one
  access, a float32 one in two, a float64 one in four. A 16-bit operand split into
  narrower accesses, or a float32 one into 64-bit ones, falls short of the count.
"""

from __future__ import annotations

import functools

import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ... import config
from .nvrtc import PTXAS_VERBOSE, Compiled, write_atomically

#: 32-bit registers one block may use on every architecture in config.GATE_ARCHS
#: (compute capability 8.x and 9.0, CUDA C Programming Guide, "Technical Specifications").
REGISTERS_PER_BLOCK = 65536

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_FUNCTION = re.compile(r"^\s*Function : (\S+)\s*$", re.MULTILINE)
# Opcodes with their modifiers (e.g. "LDG.E.128.CONSTANT"); a literal start keeps the scan fast.
_OPCODE = {op: re.compile(rf"{op}(?:\.\w+)*") for op in ("LDG", "STG", "LDL", "STL")}


@dataclass(frozen=True)
class KernelReport:
    """Resources and memory instructions of one entry point on one architecture."""

    name: str            # the name expression
    arch: str
    registers: int
    stack: int           # bytes of stack frame
    spill_stores: int    # bytes
    spill_loads: int     # bytes
    local_accesses: int  # LDL/STL instructions
    loads_128: int       # LDG ... .128 instructions
    stores_128: int      # STG ... .128 instructions

    def problems(self, vectors: bool = True, accesses: tuple[int, int] | None = None
                 ) -> list[str]:
        """Why this kernel fails the machine-code gate (empty when it passes).

        ``vectors``: require 128-bit loads and stores (every optimizer entry point; helper
        kernels such as reductions write a few scalars and are exempt). ``accesses``: the
        (loads, stores) of 128 bits one vector step needs (:func:`vector_accesses`).
        """
        where = f"{self.name} on {self.arch}"
        found = []
        budget, budget_name = register_budget(self.name)
        if self.registers > budget:
            found.append(f"{where} uses {self.registers} registers per thread, over the budget "
                         f"of {budget} (fusedopt.config.{budget_name}); keep fewer values live "
                         "across the vector loop")
        if self.registers * config.THREADS_PER_BLOCK > REGISTERS_PER_BLOCK:
            found.append(f"{where}: {self.registers} registers x {config.THREADS_PER_BLOCK} "
                         f"threads exceeds the {REGISTERS_PER_BLOCK} registers of a block; "
                         "the launch would fail")
        if self.spill_stores or self.spill_loads:
            found.append(f"{where} spills registers ({self.spill_stores} bytes stored, "
                         f"{self.spill_loads} bytes loaded)")
        if self.stack:
            found.append(f"{where} has a {self.stack}-byte stack frame: an array indexed "
                         "at run time, or a call that was not inlined, lives in local memory")
        if self.local_accesses:
            found.append(f"{where} has {self.local_accesses} local-memory instructions "
                         "(LDL/STL)")
        if vectors and (not self.loads_128 or not self.stores_128):
            found.append(f"{where} has {self.loads_128} 128-bit global loads and "
                         f"{self.stores_128} 128-bit stores; its main loop must move 16 bytes "
                         "per access (fusedopt::Pack in kernels/common.cuh)")
        elif accesses is not None and (self.loads_128 < accesses[0]
                                       or self.stores_128 < accesses[1]):
            found.append(f"{where} has {self.loads_128} 128-bit loads and {self.stores_128} "
                         f"128-bit stores, fewer than the {accesses[0]} and {accesses[1]} one "
                         "vector step of its storage needs: an operand moves in narrower "
                         "accesses (fusedopt::Operand in kernels/common.cuh)")
        return found


def register_budget(name: str) -> tuple[int, str]:
    """(budget, its name in fusedopt.config) of the entry point ``name``: float64 kernels
    (``family<double, ...>``), optimizer entry points moving seven arrays and those of
    quantized state (those of four slots, stochastic codes and a master slot apart) have
    their own."""
    if name.split("<", 1)[-1].startswith("double"):
        return config.REGISTER_BUDGET_FLOAT64, "REGISTER_BUDGET_FLOAT64"
    if "fusedopt::Q" in name:  # quantized state: kernels/quantized.cuh
        from ...memory.storage import MODE_IDS
        if _quantized_slots().get(name, 0) >= 4:
            return (config.REGISTER_BUDGET_QUANTIZED_FOUR_SLOTS,
                    "REGISTER_BUDGET_QUANTIZED_FOUR_SLOTS")
        if name.split(", ")[3] == str(MODE_IDS["stochastic"]):
            return (config.REGISTER_BUDGET_QUANTIZED_STOCHASTIC,
                    "REGISTER_BUDGET_QUANTIZED_STOCHASTIC")
        if name.split(", ")[3] in {str(MODE_IDS[m]) for m in ("master", "remainder", "kahan")}:
            return config.REGISTER_BUDGET_QUANTIZED_MASTER, "REGISTER_BUDGET_QUANTIZED_MASTER"
        return config.REGISTER_BUDGET_QUANTIZED, "REGISTER_BUDGET_QUANTIZED"
    if _arrays().get(name, 0) >= 7:
        return config.REGISTER_BUDGET_SEVEN_ARRAYS, "REGISTER_BUDGET_SEVEN_ARRAYS"
    return config.REGISTER_BUDGET, "REGISTER_BUDGET"


@functools.lru_cache(maxsize=None)
def _arrays() -> dict[str, int]:
    """name expression -> the arrays an optimizer entry point, or the traffic ceiling that
    moves its bytes (kernels/traffic.cu), moves: param, grad, the state slots and the
    master (remainder, Kahan) slot of its storage."""
    from ...algorithms.registry import REGISTRY
    from ...constants import MAX_SLOTS
    from ...memory.storage import all_storages
    found = {f"traffic<{st.template_args()}, {ns}>": 2 + ns + (st.master is not None)
             for st in all_storages() for ns in range(MAX_SLOTS + 1)}
    found.update({name: 2 + len(spec.slots(flags)) + (st.master is not None)
                  for spec in REGISTRY.values() for st, flags, name in spec.entries()})
    return found


@functools.lru_cache(maxsize=None)
def _quantized_slots() -> dict[str, int]:
    """name expression -> the quantized slots of a quantized-state entry point (not those
    kept float32 beside the codes: ``Slot.float_state``)."""
    from ...algorithms.registry import REGISTRY
    from . import quantized
    return {name: sum(sign is not None for sign in spec.signed_slots(flags))
            for spec in REGISTRY.values() for _, flags, name in quantized.entries(spec)}


_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int16": 2}


def vector_accesses() -> dict[str, tuple[int, int]]:
    """name expression -> (128-bit loads, 128-bit stores) one vector step of every
    optimizer entry point makes: VEC = 16 bytes of its narrowest operand, each operand in
    VEC * its bytes / 16 accesses (param, grad, slots and master slot read - the param not
    with an fp32 master, which is read instead; all but the grad written), less what the
    variant's rule does not read (``OptimizerSpec.unread``; "p": the param and the slot
    it is kept with)."""
    out = {}
    for spec, entries in _optimizer_entries():
        for st, flags, name in entries:
            if spec.factored is not None:
                # kernels/factored.cuh: one loop reads p and g and writes p (the factors
                # read by index), the other (rank < 2) also reads and writes the whole
                # moment; every operand of the param's type, one access a vector each.
                out[name] = (2 + 3, 1 + 2)
                continue
            sizes = [_BYTES[st.param], _BYTES[st.grad]]
            sizes += [_BYTES[st.state]] * len(spec.slots(flags))
            if st.master:
                sizes.append(_BYTES[st.master[1]])
            vec = 16 // min(sizes)
            per = [vec * b // 16 for b in sizes]
            unread = per[0] if st.mode == "master" else 0
            operands = ["p", "g", *spec.slots(flags)]
            for skipped in spec.unread(flags):
                if skipped != "p":
                    unread += per[operands.index(skipped)]
                    continue
                unread += (0 if st.mode == "master" else per[0]) + (per[-1] if st.master
                                                                     else 0)
            # A param the rule neither reads nor assigns is stored as it was loaded: the
            # compiler may drop that store (Muon's momentum pass).
            kept = 0 if "p" in spec.unread(flags) and not _assigns_param(spec) else per[0]
            out[name] = (sum(per) - unread, sum(per) - per[1] - per[0] + kept)
    return out


def _assigns_param(spec) -> bool:
    """Whether ``spec``'s rule assigns ``p`` anywhere in its body."""
    import ast

    from .translate import function
    return any(isinstance(n, ast.Name) and n.id == "p" and isinstance(n.ctx, ast.Store)
               for n in ast.walk(function(spec.rule)))


#: The NVIDIA binary tools the gates run, and the wheel that ships each (cuobjdump -sass hands
#: the cubin to nvdisasm). NVRTC itself comes from nvidia-cuda-nvrtc (fusedopt.backends.cuda.nvrtc).
TOOL_PACKAGES = {"cuobjdump": "nvidia-cuda-cuobjdump", "nvdisasm": "nvidia-cuda-nvdisasm"}


def environment_dirs() -> list[Path]:
    """The site-packages folders of this environment (``sys.prefix``): where the gates look."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[k]) for k in ("purelib", "platlib")))


def tool(name: str) -> str:
    """Path of a CUDA binary tool from its ``nvidia-cuda-*`` wheel in this environment.

    Only this environment is searched, never a CUDA toolkit that happens to be installed
    (CUDA_HOME, /usr/local/cuda, PATH): the gates must run the versions pyproject.toml pins,
    and a tool missing from the environment must fail here, on every machine alike.
    """
    for folder in environment_dirs():
        for path in sorted(folder.glob(f"nvidia/*/bin/{name}")):
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    package = TOOL_PACKAGES.get(name, f"nvidia-cuda-{name}")
    raise FileNotFoundError(
        f"{name} is not installed in this environment ({sys.prefix}); the CUDA machine-code "
        f"gate needs it: pip install {package} (it is in fusedopt's cudacheck extra: "
        "pip install -e '.[cudacheck]', which `make test` does)")


def disassemble(cubin: bytes, cache_dir: Path | None = None) -> str:
    """``cuobjdump -sass`` of ``cubin`` (cached on disk under its hash with ``cache_dir``)."""
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / f"{hashlib.sha256(cubin).hexdigest()[:32]}.sass"
        if cached.is_file():
            return cached.read_text()
    cuobjdump, nvdisasm = tool("cuobjdump"), tool("nvdisasm")
    # cuobjdump finds nvdisasm on PATH: put this environment's first, so no other is used.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(nvdisasm).parent),
                                                 os.environ.get("PATH", "")]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        result = subprocess.run([cuobjdump, "-sass", str(path)], capture_output=True,
                                text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {result.stderr.strip()}")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cached, result.stdout.encode())
    return result.stdout


def ptxas_resources(log: str) -> dict[str, dict[str, int]]:
    """mangled name -> registers, stack, spill_stores, spill_loads, from ptxas -v lines."""
    found: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if m := _ENTRY.search(line) or _PROPERTIES.search(line):
            current = found.setdefault(m.group(1), {})
        elif current is not None and (m := _FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                           spill_loads=int(m.group(3)))
        elif current is not None and (m := _REGISTERS.search(line)):
            current["registers"] = int(m.group(1))
    return found


def sass_functions(text: str) -> dict[str, str]:
    """mangled name -> its SASS, from ``cuobjdump -sass`` output."""
    parts = _FUNCTION.split(text)  # [preamble, name, body, name, body, ...]
    return dict(zip(parts[1::2], parts[2::2]))


def _opcodes(code: str, op: str) -> list[str]:
    return _OPCODE[op].findall(code)


def _count_128(opcodes: list[str]) -> int:
    return sum("128" in opcode.split(".") for opcode in opcodes)


def inspect(compiled: Compiled, cache_dir: Path | None = None) -> dict[str, KernelReport]:
    """name expression -> :class:`KernelReport` for every entry point of ``compiled``."""
    if not compiled.ok:
        raise ValueError(f"{compiled.label} did not compile; run the compile gate first")
    resources = ptxas_resources(compiled.log)
    functions = sass_functions(disassemble(compiled.cubin, cache_dir))
    reports = {}
    for name, mangled in compiled.lowered.items():
        if mangled not in resources or mangled not in functions:
            raise ValueError(f"{compiled.label}: no ptxas report or SASS for {name} "
                             f"({mangled}); was it compiled with {PTXAS_VERBOSE}?")
        res, code = resources[mangled], functions[mangled]
        reports[name] = KernelReport(
            name=name, arch=compiled.arch, registers=res.get("registers", 0),
            stack=res.get("stack", 0), spill_stores=res.get("spill_stores", 0),
            spill_loads=res.get("spill_loads", 0),
            local_accesses=len(_opcodes(code, "LDL")) + len(_opcodes(code, "STL")),
            loads_128=_count_128(_opcodes(code, "LDG")),
            stores_128=_count_128(_opcodes(code, "STG")))
    return reports



def _optimizer_entries():
    """(spec, its (storage, flags, name) entries) of every registered optimizer and of each
    element pass of a matrix transform (Muon's: fusedopt/backends/cuda/launch.py)."""
    from ...algorithms.registry import REGISTRY
    from .launch import matrix_entries, matrix_passes
    for spec in REGISTRY.values():
        yield spec, spec.entries()
        for part in matrix_passes(spec):
            names = set(matrix_entries(part))
            yield part, [e for e in part.entries() if e[2] in names]


def optimizer_entries() -> set[str]:
    """Name expressions of every optimizer entry point: the ones that must be vectorized."""
    return {name for _, entries in _optimizer_entries() for _, _, name in entries}


def reduction_entries() -> set[str]:
    """Name expressions of every reduction-phase entry point (kernels/reduce.cuh): each must
    load 16 bytes per access; it stores one double per block, so no vector store."""
    from ...algorithms.registry import REGISTRY
    return {name for spec in REGISTRY.values() for name in spec.reduce_entries()}
