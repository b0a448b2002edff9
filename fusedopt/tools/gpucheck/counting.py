"""Kernel launches per step: fusedopt's own (a counting wrapper around the CUDA backend's
runtime), and every kernel on the device (CUPTI, through torch.profiler) for any step."""

from __future__ import annotations

from contextlib import contextmanager


class _CountingModule:
    def __init__(self, module, counter):
        self._module, self._counter = module, counter

    def get_function(self, name: str):
        kernel = self._module.get_function(name)
        counter = self._counter

        def launch(*args, **kwargs):
            counter.launches += 1
            return kernel(*args, **kwargs)
        return launch


class CountingRuntime:
    """The current runtime, counting the kernels fusedopt's launch code starts."""

    def __init__(self, inner):
        self.inner = inner
        self.launches = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def module(self, family: str, name_expressions):
        return _CountingModule(self.inner.module(family, name_expressions), self)


@contextmanager
def counting():
    """Install a :class:`CountingRuntime` around the current one for the block."""
    from ...backends.cuda import runtime

    counter = CountingRuntime(runtime.current())
    previous = runtime.install(counter)
    try:
        yield counter
    finally:
        runtime.install(previous)


def fusedopt_launches(step, sync=lambda: None) -> int:
    """Kernels fusedopt launches in one call of ``step`` (not timed: the wrapper costs)."""
    with counting() as counter:
        step()
        sync()
    return counter.launches


def device_launches(step, sync) -> dict:
    """Kernels and copies on the device during one call of ``step``, as CUPTI records them
    (torch.profiler's CUDA activity; it sees CuPy's kernels too, being process-wide)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        sync()
        torch.cuda.synchronize()
    kernels = copies = 0
    for event in prof.events():
        if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        name = event.name.lower()
        if name.startswith(("memcpy", "memset")):
            copies += 1
        else:
            kernels += 1
    return {"kernels": kernels, "copies": copies}
