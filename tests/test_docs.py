"""The README's example and the docstrings' examples run as written."""

import doctest
import re
from pathlib import Path

import fusedopt.algorithms.adam
import fusedopt.optimizers.loss_scale

ROOT = Path(__file__).resolve().parents[1]


def test_readme_training_loop_runs_and_learns(capsys):
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})
    iterations, loss = capsys.readouterr().out.split()
    assert int(iterations) == 300
    assert float(loss) < 1e-3  # the target is exactly linear: the fit must find it


def test_docstring_examples():
    for module in (fusedopt.algorithms.adam, fusedopt.optimizers.loss_scale):
        failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failures == 0, module.__name__


def test_readme_torch_example_runs_and_learns():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    block = next(b for b in blocks if "fusedopt.torch" in b)
    assert len(block.strip().splitlines()) <= 12
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    torch = scope["torch"]
    loss = torch.nn.functional.cross_entropy(scope["model"](scope["x"]), scope["y"]).detach()
    assert float(loss) < 0.5 and scope["opt"].state_dict()["state"][0]["step"] == 100
