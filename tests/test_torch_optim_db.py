"""PyTorch's own optimizer database, run against fusedopt.torch.

``torch.testing._internal.common_optimizers.optim_db`` (the installed torch's: nothing of it is
copied here) lists, per torch.optim class, the constructor configs its own tests run
(``optim_inputs_func``, with the ``foreach``/``fused``/``differentiable`` variants torch tests on
the CPU), the lr schedulers it runs with (``scheduler_inputs``), and the inputs its constructor
must refuse (``optim_error_inputs_func``). For every entry whose class fusedopt.torch has:

- every config, CPU, float32 and float64: the same params stepped by torch's class and by
  fusedopt's, 5 steps (a param without a grad in one of them), two param groups, params of
  every layout torch steps in place (contiguous, a channels_last conv weight, a transposed
  matrix) and a complex param where the entry says the class supports complex; params and
  every state entry compared, state strides included;
- the default config with each of its lr scheduler chains;
- every error input: fusedopt raises the same exception type (a warning: the same warning).
  The wording is fusedopt's where it names the param group and the valid range ("param
  group 0: betas[0] must be in [0, 1), got 1.0" for torch's "Invalid beta parameter at index
  0: 1.0"); torch's own where the refusal is torch's (duplicate params, named params, tensor
  lr and betas).

Refused on purpose (each refusal is checked: a clear error, nothing changed):

- ``differentiable=True``: fusedopt's step is a fused kernel outside autograd, so there is
  nothing to differentiate through; torch.optim's own step does that.
- sparse grads (the entries' ``metadata_for_sparse`` config, SGD and Adagrad): the fused pass
  reads every element of a dense grad; a sparse grad would have to be densified, which is
  the cost the user chose sparse grads to avoid. torch.optim.SparseAdam or torch's own
  classes serve them.

Not run, as torch runs them only on accelerators (``optim_inputs_func`` gives them for
"cuda"): the ``capturable=True`` configs. fusedopt refuses ``capturable=True``
(fusedopt/torch/_checks.py says why).
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest: "
                    "pip install fusedopt[test]")
from torch.testing._internal import common_optimizers as db  # noqa: E402
from tolerances import TORCH_OPTIM_DB, TORCH_OPTIM_DB_FLOAT32_LR  # noqa: E402

import fusedopt.torch as ft  # noqa: E402
from fusedopt.algorithms.registry import REGISTRY  # noqa: E402

STEPS = 5
DTYPES = (torch.float32, torch.float64)
INFOS = [info for info in db.optim_db if hasattr(ft, info.optim_cls.__name__)]


def _ours(info):
    return getattr(ft, info.optim_cls.__name__)


def _factored(info) -> bool:
    """Whether fusedopt's class for ``info`` keeps factored moments (Adafactor)."""
    from fusedopt.algorithms.registry import REGISTRY
    from fusedopt.torch._names import ROWS
    row = next(r for r in ROWS.values() if r.name == info.optim_cls.__name__)
    return REGISTRY[row.registry].factored is not None


def _configs(refused: bool):
    """(info, dtype, kwargs) for every config of the database's fusedopt classes: those
    fusedopt steps, or (``refused``) those it refuses on purpose."""
    found = []
    for info in INFOS:
        for dtype in DTYPES:
            for config in db._get_optim_inputs_including_global_cliquey_kwargs(
                    "cpu", dtype, info):
                if bool(config.kwargs.get("differentiable")) == refused:
                    found.append(pytest.param(info, dtype, config.kwargs,
                                              id=_id(info, dtype, config.desc)))
    return found


def _id(info, dtype, desc) -> str:
    return re.sub(r"[^\w&,-]+", "_", f"{info.optim_cls.__name__}-{dtype}-{desc}".replace(
        "torch.", ""))


def _params(dtype, with_complex: bool, contiguous: bool = False,
            matrices: bool = False) -> list:
    """Params of every layout torch steps in place, the same values each call
    (``contiguous``: the same values, each C-contiguous, for an optimizer whose factored
    moments step contiguous params only, Adafactor, which refuses the others by name:
    tests/test_adafactor.py; with ``matrices``, 2-D ones only: Muon's, two of a shape, a
    square one, a transposed one)."""
    g = torch.Generator().manual_seed(0)
    if matrices:
        return [torch.nn.Parameter(p) for p in (
            torch.randn(4, 5, generator=g, dtype=dtype), torch.randn(4, 5, generator=g, dtype=dtype),
            torch.randn(3, 3, generator=g, dtype=dtype),
            torch.randn(5, 4, generator=g, dtype=dtype).t())]
    made = [torch.randn(4, 5, generator=g, dtype=dtype),
            torch.randn(5, generator=g, dtype=dtype),
            torch.randn(3, 3, 3, 3, generator=g, dtype=dtype).to(
                memory_format=torch.channels_last),      # strides (27, 1, 9, 3)
            torch.randn(5, 4, generator=g, dtype=dtype).t()]  # strides (1, 4)
    if contiguous:
        made = [p.contiguous() for p in made]
    if with_complex:
        made.append(torch.randn(3, 2, generator=g, dtype=dtype.to_complex()))
    return [torch.nn.Parameter(p) for p in made]


def _grads(params, step: int, generator) -> None:
    """This step's grads, each laid out as its param (as autograd lays out a dense param's
    grad); the bias has none at step 2 (torch skips it, and so must fusedopt)."""
    for i, p in enumerate(params):
        values = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        p.grad = None if (step == 2 and i == 1) else torch.empty_like(p).copy_(values)


def _run(cls, params, kwargs, schedulers=()):
    opt = cls([{"params": params[:3]}, {"params": params[3:]}], **copy.deepcopy(kwargs))
    made = [make(opt) for make in schedulers]
    generator = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        _grads(params, step, generator)
        opt.step()
        for s in made:
            if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.step(float(sum(p.detach().abs().sum() for p in params).real))
            else:
                s.step()
    return opt


def _close(ours, theirs, what: str, bound: float | None = None) -> None:
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.dtype == theirs.dtype, \
            f"{what}: {ours!r} vs torch's {theirs!r}"
        assert ours.shape == theirs.shape and (theirs.dim() == 0
                                               or ours.stride() == theirs.stride()), \
            f"{what}: shape/strides {tuple(ours.shape)}/{ours.stride()}, torch's " \
            f"{tuple(theirs.shape)}/{theirs.stride()}"
        real = str(theirs.dtype).replace("torch.", "").replace("complex64", "float32") \
            .replace("complex128", "float64")
        scale = max(float(theirs.detach().abs().max()), 1.0) if theirs.numel() else 1.0
        worst = float((ours.detach() - theirs.detach()).abs().max()) if theirs.numel() else 0
        bound = TORCH_OPTIM_DB[real] if bound is None else bound
        assert worst <= bound * scale, f"{what}: off by {worst:g}"
    else:
        assert ours == theirs, f"{what}: {ours!r} vs torch's {theirs!r}"


def _compare(info, dtype, kwargs, schedulers=()):
    with_complex = info.supports_complex and not kwargs.get("fused")  # torch's fused: real
    contiguous = _factored(info)
    matrices = REGISTRY[_ours(info)._row.registry].matrix is not None
    theirs, ours = (_params(dtype, with_complex, contiguous, matrices) for _ in range(2))
    t_opt = _run(info.optim_cls, theirs, kwargs, schedulers)
    f_opt = _run(_ours(info), ours, kwargs, schedulers)
    # Muon's products with a tensor lr are in the tensor's float32 (tests/tolerances.py).
    bound = (TORCH_OPTIM_DB_FLOAT32_LR if matrices and isinstance(kwargs.get("lr"), torch.Tensor)
             and dtype == torch.float64 else None)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        _close(a, b, f"param {i}", bound)
        assert set(f_opt.state[a]) >= set(t_opt.state[b]), \
            f"param {i}: state keys {sorted(f_opt.state[a])}, torch's {sorted(t_opt.state[b])}"
        for key, value in t_opt.state[b].items():
            _close(f_opt.state[a][key], value, f"param {i}, state {key!r}")
    for ga, gb in zip(f_opt.param_groups, t_opt.param_groups):
        assert float(ga["lr"]) == pytest.approx(float(gb["lr"]), rel=1e-12)


@pytest.mark.parametrize("info, dtype, kwargs", _configs(refused=False))
def test_every_config_matches_torch(info, dtype, kwargs):
    _compare(info, dtype, kwargs)


@pytest.mark.parametrize("info, dtype, kwargs", _configs(refused=True))
def test_differentiable_configs_are_refused_on_purpose(info, dtype, kwargs):
    with pytest.raises(ValueError, match="param group 0: differentiable=True is not "
                                         "supported: fusedopt's step is a fused kernel"):
        _ours(info)(_params(dtype, False), **kwargs)


@pytest.mark.parametrize("info, chain", [
    pytest.param(info, chain, id=f"{info.optim_cls.__name__}-{k}")
    for info in INFOS for k, chain in enumerate(info.scheduler_inputs)])
def test_the_default_config_follows_each_scheduler_chain(info, chain):
    _compare(info, torch.float64, {}, chain)


@pytest.mark.parametrize("info", [pytest.param(i, id=i.optim_cls.__name__) for i in INFOS
                                  if i.supports_sparse])
def test_sparse_grads_are_refused_and_nothing_changes(info):
    kwargs, _ = info.metadata_for_sparse
    weight = torch.nn.Parameter(torch.ones(4, 2))
    opt = _ours(info)([weight], **kwargs)
    before = copy.deepcopy(opt.state_dict()["state"])  # Adagrad's is made at construction
    weight.grad = torch.sparse_coo_tensor([[1]], [[1.0, 1.0]], (4, 2), check_invariants=True)
    with pytest.raises(TypeError, match=r"param group 0, param 0 \(shape \(4, 2\)\) has a "
                                        "sparse grad"):
        opt.step()
    assert torch.equal(weight, torch.ones(4, 2))
    after = opt.state_dict()["state"]
    assert after.keys() == before.keys() and all(
        torch.equal(after[k][key], value) for k in before for key, value in before[k].items())


def _error_inputs():
    found = []
    for info in INFOS:
        for k, error in enumerate(info.optim_error_inputs_func(device="cpu",
                                                               dtype=torch.float32)):
            found.append(pytest.param(info, error, id=f"{info.optim_cls.__name__}-{k}-"
                                      f"{_id(info, '', error.optimizer_error_input.desc)}"))
    return found


def _raised(make):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            make()
        except Exception as error:  # noqa: BLE001 - the type is what is compared
            return error, caught
    return None, caught


@pytest.mark.parametrize("info, error", _error_inputs())
def test_every_error_input_is_refused_as_torch_refuses_it(info, error):
    config = error.optimizer_error_input
    if error.error_on == db.OptimizerErrorEnum.STEP_ERROR and _factored(info):
        # torch's Adafactor refuses complex params at its first step (a RuntimeError);
        # fusedopt's when they are given, with the TypeError of its dtype checks
        with pytest.raises(TypeError, match="complex"):
            _ours(info)(config.params, **config.kwargs)
        return
    on_step = error.error_on == db.OptimizerErrorEnum.STEP_ERROR  # Muon's complex params

    def make(cls):
        params = config.params
        if params is None:  # the database leaves the params to the test
            params = [torch.nn.Parameter(torch.randn(2, 2))]

        def made():
            opt = cls(params, **config.kwargs)
            if on_step:
                for p in params:
                    p.grad = torch.ones_like(p)
                opt.step()
        return made

    for cls in (info.optim_cls, _ours(info)):
        raised, caught = _raised(make(cls))
        if issubclass(error.error_type, Warning):
            assert raised is None, f"{cls.__module__}.{cls.__name__}: {raised!r}"
            assert any(issubclass(w.category, error.error_type)
                       and re.search(error.error_regex, str(w.message)) for w in caught), \
                f"{cls.__module__}.{cls.__name__}: no {error.error_type.__name__} " \
                f"{error.error_regex!r} among {[str(w.message) for w in caught]}"
        else:
            assert type(raised) is error.error_type, \
                f"{cls.__module__}.{cls.__name__} raised {raised!r}, torch's test expects " \
                f"{error.error_type.__name__}({error.error_regex!r})"
