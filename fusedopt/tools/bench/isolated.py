"""The isolated method: each contender in a worker process of its own, driven round by round.

The parent starts one worker (:mod:`.worker`) per contender name and keeps it for the whole
run. For each case it asks every worker to build its contender (arrays of its own), picks
the calls per block from their first calls, then runs rounds: in each round it tells each
worker in turn "run one block" and collects its time, starting from a different worker
every round (as :func:`.timing.interleave` does in one process). A noisy moment therefore
hits every contender alike, and no contender's thread pool runs beside another's: while
one worker times, the others wait on their pipes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import timing
from .results import Run
from .worker import read_message, write_message

#: What the sweep asks a worker to build: fusedopt.tools.bench.contenders.build(**kwargs).
SWEEP_BUILDER = "fusedopt.tools.bench.contenders:build"


class WorkerFailed(RuntimeError):
    pass


def _environment() -> dict:
    """The parent's environment, with the fusedopt it imported first on the path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class Worker:
    """One worker process and its pipe."""

    def __init__(self, label: str):
        self.label = label
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fusedopt.tools.bench"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=_environment())

    def send(self, *request) -> None:
        try:
            write_message(self.process.stdin, request)
        except (BrokenPipeError, OSError) as error:
            raise WorkerFailed(f"worker '{self.label}' died ({error}; exit code "
                               f"{self.process.poll()})") from None

    def receive(self):
        """The next reply. An ``error`` reply raises WorkerFailed."""
        try:
            reply = read_message(self.process.stdout)
        except (OSError, EOFError) as error:
            reply, why = None, str(error)
        else:
            why = "it closed its pipe"
        if reply is None:
            raise WorkerFailed(f"worker '{self.label}' died ({why}; exit code "
                               f"{self.process.wait()})")
        if reply[0] == "error":
            raise WorkerFailed(f"{self.label}: {reply[1]}")
        return reply

    def ask(self, *request):
        """Send one request; its reply."""
        self.send(*request)
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                write_message(self.process.stdin, ("exit",))
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


class RemoteContender:
    """A contender built in a worker; ``time(inner)`` runs one block there."""

    def __init__(self, name: str, worker: Worker):
        self.name, self.worker = name, worker

    def time(self, inner: int) -> float:
        return self.worker.ask("block", int(inner))[1]


class Pool:
    """One worker per contender name, started on first use and kept until :meth:`close`."""

    def __init__(self):
        self.workers: dict[str, Worker] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, names) -> None:
        """Start workers for ``names`` at once (their imports then overlap)."""
        for name in names:
            if name not in self.workers:
                self.workers[name] = Worker(name)

    def worker(self, name: str) -> Worker:
        self.start([name])
        return self.workers[name]

    def _failed(self, name: str, error: WorkerFailed, notes: list[str]) -> None:
        notes.append(f"{name}: failed to build or warm up, skipped ({error})")
        worker = self.workers.get(name)
        if worker is not None and worker.process.poll() is not None:
            del self.workers[name]  # a fresh worker next time

    def build(self, builder: str, kwargs_by_name: dict[str, dict], notes: list[str]):
        """Build every contender at once (allocation overlaps), then warm each up in turn
        (so its first-call time is its own). [(RemoteContender, first call seconds)] of
        those that can run; the others are noted."""
        self.start(kwargs_by_name)
        sent = []
        for name, kwargs in kwargs_by_name.items():
            try:
                self.workers[name].send("build", builder, kwargs)
                sent.append(name)
            except WorkerFailed as error:
                self._failed(name, error, notes)
        built = []
        for name in sent:
            try:
                reply = self.workers[name].receive()
            except WorkerFailed as error:
                self._failed(name, error, notes)
                continue
            notes.extend(n for n in reply[1] if n not in notes)
            if reply[0] == "built":
                built.append(name)
        out = []
        for name in built:
            try:
                first = self.workers[name].ask("warm")[1]
            except WorkerFailed as error:
                self._failed(name, error, notes)
                continue
            out.append((RemoteContender(name, self.workers[name]), first))
        return out

    def drop_all(self) -> None:
        for worker in list(self.workers.values()):
            try:
                worker.ask("drop")
            except WorkerFailed:
                self.workers.pop(worker.label, None)

    def describe(self) -> dict[str, dict]:
        out = {}
        for name, worker in self.workers.items():
            try:
                out[name] = worker.ask("describe")[1]
            except WorkerFailed as error:
                out[name] = {"error": str(error)}
        return out

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()


def time_isolated(pool: Pool, builder: str, kwargs_by_name: dict[str, dict], rounds: int,
                  notes: list[str], calls_per_block: int | None = None,
                  min_sample_s: float = timing.MIN_SAMPLE_S, on_round=None) -> Run | None:
    """Build each contender in its worker (``builder(**kwargs)``), then time them
    interleaved, round by round; None if none could run. The workers drop their arrays
    afterwards."""
    built = pool.build(builder, kwargs_by_name, notes)
    try:
        if not built:
            return None
        return timing.time_rounds([c for c, _ in built], [t for _, t in built], rounds,
                                  calls_per_block, min_sample_s, on_round)
    except WorkerFailed as error:  # a worker died mid-round: this case has no figures
        notes.append(f"case abandoned: {error}")
        return None
    finally:
        pool.drop_all()
