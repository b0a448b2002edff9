"""torch.compile around fusedopt.torch's step: the fused step runs eagerly at one graph break
(fusedopt/torch/optimizer.py, ``Optimizer._fused``), the compiled code around it keeps its
graphs, results are the eager ones bit for bit, and nothing warns. ``fullgraph=True`` is
refused by torch.compile with fusedopt's reason."""

import warnings

import pytest
import torch
import torch_loops as loops

import fusedopt.torch as ft

#: torch.compile's first use imports inductor, whose torch/utils/mkldnn.py still uses the
#: deprecated torch.jit.script_method: torch's own warning, raised with any optimizer.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def _breaks() -> list:
    return list(torch._dynamo.utils.counters["graph_break"])


def test_a_compiled_step_matches_the_eager_step_bit_for_bit_without_warnings():
    model, twin = loops.twins()
    x, y = loops.data()
    compiled_opt = ft.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    eager_opt = ft.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    step = torch.compile(compiled_opt.step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            for m in (model, twin):
                m.zero_grad()
                torch.nn.functional.cross_entropy(m(x), y).backward()
            step()
            eager_opt.step()
    assert [str(w.message) for w in caught] == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    assert float(compiled_opt.state[next(model.parameters())]["step"]) == 20
    assert _breaks() and all("fusedopt's step" in reason for reason in _breaks())


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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            a, b = compiled(model, opts[0]), train_step(twin, opts[1])
            assert torch.equal(a, b)
    assert [str(w.message) for w in caught] == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_fullgraph_is_refused_with_fusedopts_reason():
    w = torch.nn.Parameter(torch.ones(3))
    opt = ft.SGD([w], lr=0.1)
    w.grad = torch.ones(3)
    with pytest.raises(Exception, match="fusedopt's step"):
        torch.compile(opt.step, fullgraph=True)()
    assert torch.equal(w, torch.ones(3))
