"""torch.compile around fusedopt.torch's step: the step is one custom op,
``torch.ops.fusedopt.step`` (fusedopt/torch/_compile.py), so a compiled ``opt.step`` or
training step traces with no graph break in fusedopt, ``fullgraph=True`` holds, the results
are the eager step's bit for bit, nothing warns, and ``torch.library.opcheck`` passes the op
for every class."""

import warnings

import pytest
import torch
import torch_loops as loops

import fusedopt.torch as ft
from fusedopt.torch import _compile
from fusedopt.torch._names import ROWS

#: torch.compile's first use imports inductor, whose torch/utils/mkldnn.py still uses the
#: deprecated torch.jit.script_method: torch's own warning, raised with any optimizer.
JIT_WARNING = "`torch.jit.script_method` is deprecated"
pytestmark = pytest.mark.filterwarnings(f"ignore:{JIT_WARNING}")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _breaks() -> list:
    return list(torch._dynamo.utils.counters["graph_break"])


def _warned(run) -> list:
    """The messages of the warnings ``run()`` raises, every one recorded, but torch's own
    deprecation above."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", JIT_WARNING)
        run()
    return [str(w.message) for w in caught]


def _classes():
    return [ROWS[name].name for name in ROWS]


def _loss(m, x, y):
    m.zero_grad()
    torch.nn.functional.cross_entropy(m(x), y).backward()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", ["AdamW", "NAdam", "SGD"])
def test_fullgraph_step_matches_the_eager_step_bit_for_bit_over_20_steps(name, backend):
    model, twin = loops.twins()
    x, y = loops.data()
    settings = dict(lr=1e-2, weight_decay=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
    compiled_opt = getattr(ft, name)(model.parameters(), **settings)
    eager_opt = getattr(ft, name)(twin.parameters(), **settings)
    step = torch.compile(compiled_opt.step, fullgraph=True, backend=backend)

    def run():
        for _ in range(20):
            _loss(model, x, y), _loss(twin, x, y)
            step()
            eager_opt.step()
    assert _warned(run) == []
    assert _breaks() == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    for p, q in zip(model.parameters(), twin.parameters()):
        mine, theirs = compiled_opt.state[p], eager_opt.state[q]
        assert mine.keys() == theirs.keys() and mine
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    first = compiled_opt.state[next(model.parameters())]
    assert set(first) == ({"momentum_buffer"} if name == "SGD" else set(first) | {"step"})
    assert name == "SGD" or float(first["step"]) == 20


def _awkward_params(second=torch.float64):
    """A channels_last conv weight, a float64 (or complex) param, a param without grad, one
    listed twice."""
    torch.manual_seed(1)
    conv = torch.nn.Parameter(torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last))
    z = torch.nn.Parameter(torch.randn(5, dtype=second))
    idle, twice = torch.nn.Parameter(torch.randn(2)), torch.nn.Parameter(torch.randn(3))
    return [conv, z, idle, twice]


def _awkward_grads(params, k):
    g = torch.Generator().manual_seed(k)
    for p in params[:2] + params[3:]:
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=g).to(
            memory_format=torch.preserve_format)
    params[0].grad = params[0].grad.contiguous(memory_format=torch.channels_last)


def _awkward_optimizers(second=torch.float64):
    ours, theirs = _awkward_params(second), _awkward_params(second)
    with warnings.catch_warnings():  # torch's own warning for a param listed twice
        warnings.simplefilter("ignore")
        opts = [ft.Adam(ps + [ps[3]], lr=1e-2) for ps in (ours, theirs)]
    return ours, theirs, opts


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fullgraph_steps_awkward_params_as_the_eager_step(backend):
    ours, theirs, opts = _awkward_optimizers()
    step = torch.compile(opts[0].step, fullgraph=True, backend=backend)

    def run():
        for k in range(6):
            _awkward_grads(ours, k), _awkward_grads(theirs, k)
            step()
            opts[1].step()
    assert _warned(run) == []
    assert _breaks() == []
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    assert ours[2].grad is None and 2 not in opts[0].state_dict()["state"]
    assert float(opts[0].state[ours[3]]["step"]) == 12  # listed twice: stepped twice a step
    for p, q in zip(ours, theirs):
        mine, other = opts[0].state.get(p, {}), opts[1].state.get(q, {})
        assert mine.keys() == other.keys() and all(torch.equal(mine[k], other[k]) for k in mine)


def test_complex_params_step_eagerly_at_one_graph_break_and_fullgraph_says_why():
    ours, theirs, opts = _awkward_optimizers(torch.complex64)
    step = torch.compile(opts[0].step)

    def run():
        for k in range(4):
            _awkward_grads(ours, k), _awkward_grads(theirs, k)
            step()
            opts[1].step()
    assert _warned(run) == []
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    assert _breaks() and all("complex params runs eagerly" in r for r in _breaks())
    torch._dynamo.reset()
    kept = [p.detach().clone() for p in ours]
    with pytest.raises(Exception, match="inductor cannot compile an op that writes complex"):
        torch.compile(opts[0].step, fullgraph=True)()
    assert all(torch.equal(p, q) for p, q in zip(ours, kept))


def test_under_inductor_the_op_steps_the_optimizers_own_tensors(monkeypatch):
    # inductor hands the op the tensors themselves: nothing is copied (aot_eager copies)
    copied = []
    same = _compile._same
    monkeypatch.setattr(_compile, "_same", lambda a, b: same(a, b) or copied.append(a))
    model, twin = loops.twins()
    x, y = loops.data()
    opts = [ft.Adam(m.parameters(), lr=1e-2) for m in (model, twin)]
    step = torch.compile(opts[0].step, fullgraph=True)
    for _ in range(4):
        _loss(model, x, y), _loss(twin, x, y)
        step()
        opts[1].step()
    assert copied == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    monkeypatch.setattr(_compile, "_same", lambda a, b: False)  # the copying path, compared
    for _ in range(2):
        _loss(model, x, y), _loss(twin, x, y)
        step()
        opts[1].step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_a_compiled_training_step_with_the_optimizer_inside_matches_eager():
    model, twin = loops.twins()
    x, y = loops.data()
    opts = [ft.Adam(m.parameters(), lr=1e-2) for m in (model, twin)]

    def train_step(m, opt):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    compiled = torch.compile(train_step, backend="aot_eager")
    losses = []

    def run():
        for _ in range(10):
            losses.append((compiled(model, opts[0]), train_step(twin, opts[1])))
    assert _warned(run) == []
    assert len(losses) == 10 and all(torch.equal(a, b) for a, b in losses)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    # torch breaks the graph at loss.backward() (dynamo does not trace autograd's backward
    # without compiled autograd); nothing in fusedopt does.
    assert _breaks() and not [r for r in _breaks() if "fusedopt" in r]


def test_explain_sees_one_graph_with_the_op_and_no_break():
    w = torch.nn.Parameter(torch.ones(5))
    opt = ft.Adam([w], lr=0.1)
    w.grad = torch.full((5,), 0.5)
    opt.step()  # the state exists: the graph holds the op with every state tensor
    report = torch._dynamo.explain(opt.step)()
    assert (report.graph_count, report.graph_break_count) == (1, 0)
    ops = [n.target for g in report.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.fusedopt.step) == 1


def test_a_new_lr_needs_no_new_graph():
    # As a scheduler sets it. (A scheduler attached to an optimizer wraps its ``step`` in a
    # function dynamo skips, for torch.optim's classes as for these: compile the step
    # before attaching one, or the code that calls both.)
    model, twin = loops.twins()
    x, y = loops.data()
    opts = [ft.Adam(m.parameters(), lr=1e-2) for m in (model, twin)]
    step = torch.compile(opts[0].step, fullgraph=True, backend="aot_eager")
    for i in range(8):
        _loss(model, x, y), _loss(twin, x, y)
        step()
        opts[1].step()
        if i % 2:
            for o in opts:
                o.param_groups[0]["lr"] /= 2
        if i == 1:  # past the first step's state and the second's graph
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert opts[0].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"] == 1e-2 / 16
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def _stepped_once(name):
    torch.manual_seed(0)
    matrices = name == "Muon"  # 2-D params only
    params = [torch.nn.Parameter(torch.randn(4, 3)),
              torch.nn.Parameter(torch.randn(7, 2) if matrices else torch.randn(7)),
              torch.nn.Parameter(torch.randn(2, 2) if matrices else torch.randn(2))]
    opt = getattr(ft, name)(params, lr=1e-2, **({"momentum": 0.9} if name == "SGD" else {}))
    if hasattr(opt, "train"):  # schedule-free: steps in train mode only
        opt.train()
    for p in params[:2]:  # the third has no grad: None in the op's grads
        p.grad = torch.randn_like(p)
    opt.step()  # state and counters exist
    return opt, params


@pytest.mark.parametrize("name", _classes())
def test_opcheck_passes_the_op_for_every_class(name):
    opt, _ = _stepped_once(name)
    args = [[t.detach().clone() if t is not None else None for t in ts]
            for ts in _compile.arguments(opt)]
    assert args[2] and all(t is not None for t in args[1][:2]) and args[1][2] is None
    torch.library.opcheck(torch.ops.fusedopt.step.default, (opt._op_handle, *args))


@pytest.mark.parametrize("name", ["Adam", "NAdam", "Adagrad"])
def test_the_op_on_copies_steps_the_copies_as_the_eager_step_steps_the_optimizer(name):
    opt, _ = _stepped_once(name)
    twin, twin_params = _stepped_once(name)
    copies = [[t.detach().clone() if t is not None else None for t in ts]
              for ts in _compile.arguments(opt)]
    torch.ops.fusedopt.step(opt._op_handle, *copies)
    twin.step()
    expected = _compile.arguments(twin)
    for given, wanted in zip(copies[:1] + copies[2:], expected[:1] + expected[2:]):
        assert len(given) == len(wanted) and all(map(torch.equal, given, wanted))
    # The optimizer's own tensors were stepped through the copies, and hold the same values.
    own = _compile.arguments(opt)
    assert all(map(torch.equal, own[0] + own[2] + own[3], copies[0] + copies[2] + copies[3]))
    assert float(twin.state[twin_params[0]]["step"]) == 2


def test_the_op_refuses_arguments_that_are_not_its_optimizers_and_changes_nothing():
    w = torch.nn.Parameter(torch.ones(3))
    opt = ft.Adam([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    params, grads, states, counters = _compile.arguments(opt)
    kept = [t.clone() for t in params + states + counters]
    with pytest.raises(ValueError, match=r"fusedopt::step: states do not match .*"
                                         r"_compile.arguments\(opt\)"):
        torch.ops.fusedopt.step(opt._op_handle, params, grads, states[:1], counters)
    assert all(torch.equal(a, b) for a, b in zip(params + states + counters, kept))


def test_a_step_refused_inside_the_op_leaves_its_arguments_and_the_grads_as_they_were():
    w = torch.nn.Parameter(torch.ones(3))
    opt = ft.Adam([w], lr=0.1)
    w.grad = grad = torch.ones(3)
    opt.step()
    params, _, states, counters = [[t.detach().clone() for t in ts]
                                   for ts in _compile.arguments(opt)]
    kept = [t.clone() for t in params + states + counters]
    with pytest.raises(ValueError, match=r"fusedopt::step: grad 0 is \(3,\) torch.float64, "
                                         r"its param \(3,\) torch.float32"):
        torch.ops.fusedopt.step(opt._op_handle, params, [torch.ones(3, dtype=torch.float64)],
                                states, counters)
    with pytest.raises(TypeError, match="has a sparse grad"):  # refused by the step itself
        torch.ops.fusedopt.step(opt._op_handle, params, [torch.ones(3).to_sparse()],
                                states, counters)
    assert w.grad is grad
    assert all(torch.equal(a, b) for a, b in zip(params + states + counters, kept))


def test_a_cuda_step_being_captured_in_a_cuda_graph_is_refused(monkeypatch):
    # No GPU here: the capture and the device are what torch would report under
    # torch.cuda.graph, so this checks the refusal's logic and words, not a capture.
    w = torch.nn.Parameter(torch.ones(3))
    opt = ft.SGD([w], lr=0.1)
    w.grad = torch.ones(3)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    opt.step()  # a CPU optimizer: nothing is captured
    assert torch.equal(w, torch.full((3,), 0.9))
    monkeypatch.setattr(opt, "_device_type", "cuda")
    args = _compile.arguments(opt)
    for call in (opt.step, lambda: torch.ops.fusedopt.step(opt._op_handle, *args)):
        with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
            call()
    assert torch.equal(w, torch.full((3,), 0.9))


def test_the_op_is_tagged_unsafe_for_cuda_graphs():
    assert torch.Tag.cudagraph_unsafe in torch.ops.fusedopt.step.default.tags


def test_a_copy_gets_its_own_handle():
    import copy
    w = torch.nn.Parameter(torch.ones(3))
    opt = ft.SGD([w], lr=0.1)
    twin = copy.deepcopy(opt)
    assert twin._op_handle != opt._op_handle
    assert _compile._LIVE[opt._op_handle] is opt and _compile._LIVE[twin._op_handle] is twin
