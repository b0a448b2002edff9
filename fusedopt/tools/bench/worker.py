"""One benchmark contender in a process of its own, driven by the parent over a pipe.

Run as ``python -m fusedopt.tools.bench`` by :mod:`.isolated`; nothing else in the
process runs while it times, so no other contender's thread pool (Numba's, torch's) spins
beside it, and it imports only what its contender needs: the module named in a ``build``
request (a fused-step worker never imports torch).

Requests and replies are pickled tuples, each framed by a 4-byte big-endian length, on
stdin and on the process's original stdout; anything the contender prints goes to stderr.

    ("build", "module:function", kwargs)  -> ("built", notes): arrays allocated
                                             ("absent", notes): it cannot run here
    ("warm",)                             -> ("ready", seconds of one timed call after
                                             the untimed warm-up calls)
    ("block", calls)                      -> ("time", seconds per call)
    ("drop",)                             -> ("dropped",): the contender's arrays are freed
    ("describe",)                         -> ("described", dict): threads, loaded modules
    ("exit",) or end of input             -> the process exits
    a request that fails                  -> ("error", "Type: first line", traceback)
"""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import struct
import sys
import traceback

_HEADER = struct.Struct(">I")


def read_message(stream):
    """The next framed message, or None at end of input."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    return pickle.loads(stream.read(length))


def write_message(stream, message) -> None:
    data = pickle.dumps(message)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def describe_process() -> dict:
    """What in this process could change its timings: thread pools and heavy imports."""
    out = {"pid": os.getpid(), "torch_imported": "torch" in sys.modules,
           "cupy_imported": "cupy" in sys.modules}
    if "numba" in sys.modules:
        import numba
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel function has run in this process
            layer = None
        out["numba"] = {"threads": numba.get_num_threads(), "threading_layer": layer}
    if out["torch_imported"]:
        import torch
        out["torch_threads"] = torch.get_num_threads()
    return out


class _Contender:
    def __init__(self):
        self.step = None
        self.sync = None

    def build(self, target: str, kwargs: dict):
        from . import timing

        self.drop()
        module, _, function = target.partition(":")
        built = getattr(importlib.import_module(module), function)(**kwargs)
        if built.step is None:
            return ("absent", built.notes)
        self.step, self.sync = built.step, timing.synchronizer(built.backend)
        return ("built", built.notes)

    def warm(self):
        from .timing import warm_up_one

        self._need()
        return ("ready", warm_up_one(self.step, self.sync))

    def _need(self):
        if self.step is None:
            raise RuntimeError("no contender built: send 'build' first")

    def block(self, calls: int):
        from .timing import time_block

        self._need()
        return ("time", time_block(self.step, calls, self.sync))

    def drop(self):
        self.step = self.sync = None
        gc.collect()
        return ("dropped",)


def serve(requests, replies) -> int:
    contender = _Contender()
    while True:
        message = read_message(requests)
        if message is None or message[0] == "exit":
            return 0
        kind, args = message[0], message[1:]
        try:
            if kind == "build":
                reply = contender.build(*args)
            elif kind == "warm":
                reply = contender.warm()
            elif kind == "block":
                reply = contender.block(*args)
            elif kind == "drop":
                reply = contender.drop()
            elif kind == "describe":
                reply = ("described", describe_process())
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as error:  # reported to the parent, which notes it and carries on
            from .machine import first_line
            reply = ("error", first_line(error), traceback.format_exc())
        write_message(replies, reply)


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt frames
    return serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    sys.exit(main())
