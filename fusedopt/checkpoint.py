"""Optimizer checkpoints: one safetensors file, written atomically, read without running code.

    opt.save("opt.safetensors")                        # or fusedopt.checkpoint.save(opt, path)
    opt = fusedopt.load("opt.safetensors", params)     # the saved class, config and state
    opt.load("opt.safetensors")                        # state into an existing optimizer

Format ``fusedopt.optimizer``, version 1 (:data:`FORMAT`, :data:`VERSION`): a safetensors
file (https://github.com/huggingface/safetensors) holding

- every state array as a tensor named ``state/{position}/{slot}`` (e.g. ``state/3/m``),
  in its own dtype (float16, bfloat16 and the rest bit for bit), C order whatever the
  param's memory order; a quantized slot (``state_dtype="q8"``/``"q4"``) as two,
  ``.../codes`` and ``.../absmax`` (fusedopt/checkpoint_quantized.py);
- one header metadata entry, ``fusedopt``: a JSON object with ``format``, ``version``,
  ``class`` (e.g. "Adam"), ``optimizer`` (its registry name), ``convention``, ``backend``,
  ``config`` (``get_config()``; a schedule is stored as ``{"schedule": "<its repr>"}`` and
  must be passed again to ``fusedopt.load``: a checkpoint holds no code), ``iterations``,
  ``steps`` (per-param step counts), ``seed`` (the optimizer's stochastic-rounding seed:
  with the step counts, what a resumed run's random bits continue from), and ``params``:
  per position its shape, dtype, memory order, hyperparameter group, whether weight decay
  applies, and its slots' names and dtypes (a quantized slot: its format, map and block).

Params are not in the file (the model's own checkpoint holds them), so a resumed run needs
both. Loading reads the JSON header and raw array bytes only: no pickle, no import by name;
the class is looked up among fusedopt's registered optimizers.

Writes are atomic: the file is written under a temporary name in the same folder
(``.NAME.XXXX.tmp``), flushed to disk (``os.fsync``), renamed over ``path``
(``os.replace``), and the folder is synced so the rename itself is durable. A process killed
at any moment leaves either the previous checkpoint or the new one, never a mix (a stray
temporary file at worst, which is never read).

A checkpoint that does not fit an optimizer - another class or convention, another number
of params, shapes, dtypes or slot names, an unknown format version - raises
:class:`CheckpointMismatch` naming the difference, and the optimizer is left as it was.
"""

from __future__ import annotations

import json
import numbers
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine import modes
from .checkpoint_quantized import by_map, check_quantized, slot_entry, slots_of
from .engine.validate import memory_order
from .memory import factored as _factored
from .memory import quant as _quant
from .memory.arrays import kind_of

FORMAT = "fusedopt.optimizer"
VERSION = 1
_KEY = "fusedopt"


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the optimizer (or is not a fusedopt checkpoint)."""


# --- the file: atomic writes and code-free reads -----------------------------------------------

def write(path, arrays: dict, metadata: dict) -> None:
    """Write ``arrays`` (name -> NumPy array, any dtype safetensors knows, bfloat16 included)
    and the JSON-serializable ``metadata`` to ``path``, atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    folder = path.parent
    tensors = {name: np.asarray(a, order="C") for name, a in arrays.items()}  # 0-d stays 0-d
    header = {_KEY: json.dumps(metadata, allow_nan=True)}
    temporary = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    with open(temporary, "xb"):  # reserved under this name, with the default permissions
        pass
    try:
        _after_create(temporary)
        save_file(tensors, str(temporary), metadata=header)
        # safetensors writes through a file of its own, private (0600): give the checkpoint
        # the permissions any new file gets here.
        os.chmod(temporary, 0o666 & ~_umask())
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _umask() -> int:
    """This process's umask, read without changing it (Linux); else set and restored."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _after_create(temporary: Path) -> None:
    """Nothing; the crash tests stop a writer here (tests/test_checkpoint.py)."""


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform without directory handles (Windows): the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path) -> tuple[dict, dict]:
    """(metadata, arrays) of the checkpoint at ``path``; raises CheckpointMismatch for a
    file that is not a fusedopt optimizer checkpoint of a version this code reads."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            arrays = {name: np.array(f.get_tensor(name), copy=True) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CheckpointMismatch(f"{path} is not a safetensors file ({error}); a fusedopt "
                                 "checkpoint is written by opt.save(path)") from None
    if _KEY not in header:
        raise CheckpointMismatch(f"{path} is a safetensors file without fusedopt's metadata: "
                                 "not an optimizer checkpoint (model weights?)")
    meta = json.loads(header[_KEY])
    if meta.get("format") != FORMAT:
        raise CheckpointMismatch(f"{path} holds format {meta.get('format')!r}, not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointMismatch(f"{path} is format version {meta.get('version')!r}; this "
                                 f"fusedopt reads version {VERSION} (use the fusedopt "
                                 "version that wrote it)")
    return meta, arrays


# --- optimizers -> records -----------------------------------------------------------------

def _plain(value, where: str):
    """``value`` as JSON-ready data: numbers, bools, strings, None, lists and dicts of them;
    a callable (a schedule) as a marker that ``fusedopt.load`` asks the caller to fill."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if callable(value):
        return {"schedule": repr(value)}
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot hold "
                    "(numbers, strings, bools and None only)")


def _slot_dtype(s) -> str:
    return kind_of(s).dtype(s)


def describe(opt) -> dict:
    """The metadata :func:`save` writes for optimizer ``opt``."""
    engine = opt._engine
    params = []
    for i, p in enumerate(engine.params):
        kind = kind_of(p)
        params.append({
            "shape": list(kind.shape(p)), "dtype": kind.dtype(p), "order": memory_order(p),
            "group": engine.group_of[i], "decays": engine.decays[i],
            "slots": [slot_entry(*slot) for slot in slots_of(engine, i)],
        })
    return {
        "format": FORMAT, "version": VERSION,
        "class": type(opt).__name__, "optimizer": opt._spec.name,
        "convention": opt.convention, "backend": opt.backend,
        "config": _plain(opt.get_config(), "config"),
        "groups": [{"hyper": _plain(h.hyper, f"group {k}")} for k, h in enumerate(engine.hypers)],
        "iterations": int(engine.iterations),
        "steps": [int(s) for s in engine.steps],
        "seed": getattr(opt, "seed", None),
        "params": params,
        **modes.saved_points(engine),  # schedule-free: the point held, the running sums
    }


def save(opt, path) -> None:
    """Write ``opt``'s class, config, counts and every state array to ``path``, atomically.

    An optimizer loaded from a checkpoint and not stepped yet saves that checkpoint's state.
    """
    if not opt._params and isinstance(opt._pending_state, Pending):
        pending = opt._pending_state
        meta = dict(pending.meta, config=_plain(opt.get_config(), "config"))
        write(path, pending.arrays, meta)
        return
    meta = describe(opt)
    engine = opt._engine
    arrays = {}
    for i, p in enumerate(engine.params):
        for n, s, fmt in slots_of(engine, i):
            if fmt is None:
                arrays[f"state/{i}/{n}"] = kind_of(s).to_host(s)
            else:
                records = _quant.to_records(kind_of(s).to_host(s), kind_of(p).size(p), fmt)
                arrays.update({f"state/{i}/{n}/{k}": v for k, v in records.items()})
    arrays.update({f"average/{i}": kind_of(a).to_host(a)  # use_ema's moving averages
                   for i, a in enumerate(engine.averages)})
    arrays.update({f"kept/{i}": kind_of(y).to_host(y)  # the training point, in eval mode
                   for i, y in enumerate(engine.kept or ()) if y is not None})
    write(path, arrays, meta)


# --- records -> optimizers -----------------------------------------------------------------

@dataclass
class Pending:
    """A checkpoint read before its optimizer holds params: checked against the params of
    the first step (or ``bind``), before anything is built, then applied."""

    path: str
    meta: dict
    arrays: dict
    adopt_decays: bool = False  # fusedopt.load: weight decay per param as saved

    def decays(self, computed: list) -> list:
        """Which params get weight decay at the build: as saved for an optimizer made by
        ``fusedopt.load``, else as the optimizer's own exclusions say (checked against the file)."""
        return [bool(e["decays"]) for e in self.meta["params"]] if self.adopt_decays \
            else computed

    def check(self, opt, params, decays=None) -> None:
        """Raise CheckpointMismatch unless the checkpoint fits ``opt`` with ``params``."""
        _check_header(self, opt)
        saved = self.meta["params"]
        if len(saved) != len(params):
            self._mismatch(f"it holds state for {len(saved)} params, the optimizer is "
                           f"given {len(params)}")
        for i, (entry, p) in enumerate(zip(saved, params)):
            kind = kind_of(p)
            if tuple(entry["shape"]) != kind.shape(p):
                self._mismatch(f"param {i} has shape {tuple(entry['shape'])} in the checkpoint, "
                               f"{kind.shape(p)} here")
            if entry["dtype"] != kind.dtype(p):
                self._mismatch(f"param {i} is {entry['dtype']} in the checkpoint, "
                               f"{kind.dtype(p)} here")
            if decays is not None and bool(entry["decays"]) != bool(decays[i]):
                where = ("applies in the checkpoint but not here" if entry["decays"]
                         else "is excluded in the checkpoint but applies here")
                self._mismatch(f"param {i}: weight decay {where} (exclude_from_weight_decay "
                               "differs)")
        optimizer_slots = tuple(opt._engine.hypers[0].slots)
        kinds = {d.name: d.shape for d in opt._spec.slot_decls}  # factored slots' shapes
        for i, (entry, p) in enumerate(zip(saved, params)):
            names = tuple(s["name"] for s in entry["slots"])
            master = opt._engine.storage_of(i, p).master  # the master slot this param gets
            slots = optimizer_slots + ((master[0],) if master else ())
            if names != slots:
                self._mismatch(f"param {i} has state slots {list(names)} in the checkpoint, "
                               f"{list(slots)} here (amsgrad, momentum, centered or "
                               "master_weights differ?)")
            for s in entry["slots"]:
                key = f"state/{i}/{s['name']}"
                if s["dtype"] in _quant.FORMATS:
                    problem = check_quantized(self.arrays, key, s, entry["shape"])
                    if problem:
                        self._mismatch(problem)
                    continue
                array = self.arrays.get(key)
                if array is None:
                    self._mismatch(f"the array {key!r} is missing")
                shape = _factored.slot_shape(kinds.get(s["name"]), tuple(entry["shape"]))
                if array.shape != shape or array.dtype.name != s["dtype"]:
                    self._mismatch(f"the array {key!r} is {array.dtype.name} {array.shape}, "
                                   f"its header says {s['dtype']} {shape}")

    def check_states(self, opt) -> None:
        """The checkpoint's state arrays have the dtypes of ``opt``'s (built) state."""
        engine = opt._engine
        for i in range(len(engine.states)):
            entries = self.meta["params"][i]["slots"]
            for (name, s, fmt), entry in zip(slots_of(engine, i), entries):
                saved, here = entry["dtype"], slot_entry(name, s, fmt)["dtype"]
                if saved != here:
                    self._mismatch(f"param {i}'s state {name!r} is {saved} in the checkpoint, "
                                   f"{here} here")
        saved_averages = sum(key.startswith("average/") for key in self.arrays)
        if saved_averages != len(engine.averages):
            self._mismatch(f"it holds {saved_averages} moving averages, the optimizer keeps "
                           f"{len(engine.averages)} (saved with a different use_ema?)")

    def apply(self, opt) -> None:
        """Copy the state into ``opt``'s arrays and restore its counts (checks passed)."""
        engine = opt._engine
        for i, p in enumerate(engine.params):
            for name, s, fmt in slots_of(engine, i):
                key = f"state/{i}/{name}"
                kind_of(s).copy_from_host(s, self.arrays[key] if fmt is None else
                                          _quant.from_records(self.arrays[f"{key}/codes"],
                                                              self.arrays[f"{key}/absmax"],
                                                              kind_of(p).size(p), fmt, key))
        for i, a in enumerate(engine.averages):
            kind_of(a).copy_from_host(a, self.arrays[f"average/{i}"])
        engine.iterations = int(self.meta["iterations"])
        if self.meta.get("seed") is not None:  # stochastic rounding continues its stream
            engine.seed = int(self.meta["seed"])
        steps = self.meta.get("steps") or [0] * len(engine.params)
        engine.steps[:] = [int(s) for s in steps]
        kept = {key.split("/")[1]: a for key, a in self.arrays.items() if key.startswith("kept/")}
        modes.restore_points(engine, dict(self.meta, kept=kept), np.asarray)

    def _mismatch(self, what: str):
        raise CheckpointMismatch(f"the checkpoint {self.path} does not fit this optimizer: {what}")


def _check_header(pending: Pending, opt) -> None:
    meta = pending.meta
    if meta["optimizer"] != opt._spec.name:
        pending._mismatch(f"it is a {meta['class']} ({meta['optimizer']!r}) checkpoint, the "
                          f"optimizer is a {type(opt).__name__} ({opt._spec.name!r})")
    if meta["convention"] != opt.convention:
        pending._mismatch(f"it was saved in the {meta['convention']!r} convention, the "
                          f"optimizer uses {opt.convention!r} (their state means different "
                          "things)")


def read_pending(path) -> Pending:
    meta, arrays = read(path)
    return Pending(str(path), by_map(meta), arrays)


def restore(opt, path) -> None:
    """Load the checkpoint at ``path`` into ``opt`` (``opt.load(path)``): state and counts.

    ``opt`` keeps its own hyperparameters (as Keras' loading of optimizer variables does; use
    ``fusedopt.load`` for the saved ones). Before ``opt`` is built the checkpoint is held and
    applied to the params of its first step, after the same checks.
    """
    pending = read_pending(path)
    if not opt._params:
        _check_header(pending, opt)
        opt._pending_state = pending
        opt._engine.iterations = int(pending.meta["iterations"])
        return
    pending.check(opt, opt._engine.params, opt._engine.decays)
    pending.check_states(opt)
    pending.apply(opt)
