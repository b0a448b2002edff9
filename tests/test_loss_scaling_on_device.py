"""Loss-scaled CUDA steps decided on the device, with no host read between steps.

The host runtime (tests/cuda_host) can make every device-to-host copy never complete on
its own (``events="never"``): the host then has a flag only by waiting, and ``waits``
counts each wait. Runs below skip a step on the device and apply the next ones - their
bias corrections depend on how many steps were applied, which the host does not know - and
must give the bits of a run in which the skipped step was never made, with ``waits == 0``
until a count is read.
"""

import numpy as np
import pytest
from cuda_host import HostRuntime

import fusedopt
from fusedopt import config
from fusedopt.algorithms.registry import REGISTRY
from fusedopt.backends.cuda import runtime
from fusedopt.engine.engine import Engine

SHAPES = ((5,), (4097,), (3, 7))


@pytest.fixture
def device(host_built):
    """A host runtime whose device-to-host copies never complete unless waited for."""
    host = HostRuntime(host_built, events="never")
    previous = runtime.install(host)
    yield host
    runtime.install(previous)


class DeviceScalar:
    """A 0-d value in the host runtime's device memory: readable as an array by device
    code, refusing to be read as a number on the host."""

    shape = ()

    def __init__(self, value):
        self._array = np.asarray(value)
        self.__cuda_array_interface__ = {"shape": (), "typestr": self._array.dtype.str}

    def __array__(self, dtype=None, copy=None):
        return self._array.astype(dtype) if dtype is not None else self._array

    def __float__(self):
        raise AssertionError("a device value was read on the host")


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 3).astype(dtype) for s in SHAPES]


def _grads(params, step, scale=1.0):
    rng = np.random.default_rng(100 + step)
    return [(rng.standard_normal(p.shape) * scale).astype(p.dtype) for p in params]


def _bad(grads):
    grads = [g.copy() for g in grads]
    grads[1][7] = np.inf
    return grads


def _bits(arrays):
    return [np.ascontiguousarray(a).view(np.uint8).copy() for a in arrays]


@pytest.mark.parametrize("name", ["adam", "nadam", "adagrad", "sgd"])
def test_a_skipped_step_then_applied_ones_without_a_host_read(device, name):
    """Steps 1, 2 (inf: skipped), 3, 4, 5 loss-scaled: the same bits as 1, 3, 4, 5 plainly
    stepped, and no wait until the count is read."""
    hp = dict(learning_rate=0.05)
    convention = "torch" if name in ("adagrad", "sgd") else "keras"
    extra = dict(lr_decay=0.1) if name == "adagrad" else (
        dict(momentum=0.9, dampening=0.3) if name == "sgd" else {})
    cls = {c.spec_name: c for c in fusedopt.Optimizer.__subclasses__()}[name]
    params, twins = _params(), _params()
    scaled = cls(**hp, **extra, convention=convention, backend="cuda")
    plain = cls(**hp, **extra, convention=convention, backend="cuda")
    for t in range(5):
        grads = _grads(params, t)
        scaled.apply_gradients(zip([g * np.float32(16) for g in (_bad(grads) if t == 1
                                                                  else grads)], params),
                               grad_scale=16.0)
        if t != 1:
            plain.apply_gradients(zip(grads, twins))
    assert device.waits == 0 and scaled._engine.pending() == 5
    assert all(np.array_equal(a, b) for a, b in zip(_bits(params), _bits(twins)))
    assert all(np.array_equal(a, b) for a, b in zip(_bits(scaled.variables),
                                                    _bits(plain.variables)))
    assert scaled.iterations == 4 and device.waits > 0  # reading the count waits, once
    assert not scaled.found_inf and scaled._engine.pending() == 0


def test_per_param_steps_with_a_skipped_step(device):
    """torch counts steps per param; steps over different subsets, one skipped on the
    device: the same bits as the run without it."""
    spec = REGISTRY["adam"]
    order = [(0, 1, 2), (0, 2), (1,), (0, 1, 2), (2,), (0, 1)]
    skipped = 2  # the step over (1,) sees an inf
    runs = {}
    for label in ("scaled", "plain"):
        engine = Engine(spec, "torch", backend="cuda", per_param_steps=True)
        engine.add_group(dict(learning_rate=0.1))
        params = _params(5)
        engine.add_params(params)
        for t, positions in enumerate(order):
            grads = [_grads(params, 10 * t)[p] for p in positions]
            if label == "plain":
                if t != skipped:
                    engine.step(grads, positions)
                continue
            if t == skipped:
                grads = [np.full_like(g, np.inf) for g in grads]
            engine.step([g * np.float32(4) for g in grads], positions, grad_scale=4.0)
        runs[label] = (engine, params)
    assert device.waits == 0
    scaled, plain = runs["scaled"], runs["plain"]
    assert all(np.array_equal(a, b) for a, b in zip(_bits(scaled[1]), _bits(plain[1])))
    assert scaled[0].steps == plain[0].steps == [4, 3, 4]


def test_more_steps_in_doubt_than_the_window_waits_for_the_oldest(device, monkeypatch):
    monkeypatch.setattr(config, "STEP_WINDOW", 2)
    params = _params()
    opt = fusedopt.Adam(backend="cuda")
    for t in range(5):
        opt.apply_gradients(zip(_grads(params, t), params), grad_scale=1.0)
    # Steps 3, 4 and 5 each found 2 in doubt: each waited for the oldest flag, only that.
    assert device.waits == 3 and opt._engine.pending() == 2
    assert opt.iterations == 5


def test_device_scale_and_found_inf_are_never_read_on_the_host(device):
    """As torch's GradScaler hands them over: a 0-d device scale and a device found_inf
    (the caller checked the grads): a set flag skips on the device, a clear one applies."""
    params, twins = _params(), _params()
    engine = Engine(REGISTRY["adam"], "keras", backend="cuda")
    engine.add_group({})
    engine.add_params(params)
    twin = Engine(REGISTRY["adam"], "keras", backend="cuda")
    twin.add_group({})
    twin.add_params(twins)
    for t, found in enumerate([0.0, 1.0, 0.0]):
        grads = _grads(params, t)
        outcome = engine.step([g * np.float32(8) for g in grads],
                              grad_scale=DeviceScalar(np.float32(8.0)),
                              found_inf=DeviceScalar(np.float32(found)))
        if not found:
            twin.step(grads)
    assert device.waits == 0
    assert all(np.array_equal(a, b) for a, b in zip(_bits(params), _bits(twins)))
    assert bool(outcome) is True and engine.iterations == 2


def test_an_inf_in_a_second_launch_group_skips_the_first(device):
    """float32 and bfloat16 params in one call are two launches; an inf in the second
    group's grads raises the one flag both read."""
    import ml_dtypes
    params = _params() + _params(1, ml_dtypes.bfloat16)
    before = _bits(params)
    opt = fusedopt.Adam(backend="cuda")
    grads = _grads(params[:3], 0) + _grads(params[3:], 0)
    grads[4][3] = np.nan
    opt.apply_gradients(zip(grads, params), grad_scale=2.0)
    assert len(opt._engine.launch_groups()) == 2
    assert all(np.array_equal(a, b) for a, b in zip(before, _bits(params)))
    assert opt.found_inf and opt.iterations == 0
