"""The README's Hugging Face Trainer and accelerate examples run as written, and fusedopt.torch's
AdamW in them trains as torch.optim.AdamW does, through their checkpoints too.

They need the ``hf`` extra (transformers, accelerate), which ``make test`` does not install:
without it the module skips, naming the extra (tests/conftest.py lets that skip pass)."""

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the Hugging Face examples need the optional "
                                           "extra: pip install 'fusedopt[hf]'")
pytest.importorskip("accelerate", reason="the Hugging Face examples need the optional extra: "
                                         "pip install 'fusedopt[hf]'")

import torch
from tolerances import VS_TORCH_LOOP

import fusedopt.torch as ft

ROOT = Path(__file__).resolve().parents[1]
TRAINER_STEPS, ACCELERATE_STEPS = 20, 80  # the examples' optimizer steps


def _example(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(),
                        re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, marker
    return found[0]


def _run(block: str, folder: Path, monkeypatch, **replace) -> dict:
    """The README block run in ``folder``, with ``replace`` (text -> text) applied first."""
    for old, new in replace.items():
        assert old in block, old
        block = block.replace(old, new)
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 (the README's own code)
    return scope


@pytest.fixture(autouse=True)
def _fresh_accelerate():
    from accelerate.state import AcceleratorState, GradientState, PartialState
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _max_diff(a, b) -> float:
    return max(float((p - q).detach().abs().max())
               for p, q in zip(a.parameters(), b.parameters()))


# --- the Trainer ------------------------------------------------------------------------------
TRAINER = "Trainer(model=model"


def _losses(trainer) -> list:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_the_trainer_example_runs_and_learns(tmp_path, monkeypatch):
    scope = _run(_example(TRAINER), tmp_path, monkeypatch)
    trainer, opt = scope["trainer"], scope["opt"]
    assert trainer.state.global_step == TRAINER_STEPS
    assert all(float(s["step"]) == TRAINER_STEPS for s in opt.state_dict()["state"].values())
    losses = _losses(trainer)
    assert len(losses) == TRAINER_STEPS // 5 and losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_trainer_example_with_torchs_adamw_ends_where_fusedopts_does(tmp_path,
                                                                          monkeypatch):
    ours = _run(_example(TRAINER), tmp_path, monkeypatch)
    (tmp_path / "torch").mkdir()
    theirs = _run(_example(TRAINER), tmp_path / "torch", monkeypatch,
                  **{"fusedopt.torch.AdamW(": "torch.optim.AdamW("})
    assert type(theirs["opt"]) is torch.optim.AdamW
    assert _max_diff(ours["model"], theirs["model"]) < VS_TORCH_LOOP["float32"]
    assert 0 < _max_diff(ours["model"], theirs["model"])  # two different optimizers ran


def test_a_trainer_run_resumed_from_its_checkpoint_ends_bit_for_bit(tmp_path, monkeypatch):
    saving = {'save_strategy="no"': 'save_strategy="steps", save_steps=10'}
    whole = _run(_example(TRAINER), tmp_path, monkeypatch, **saving)
    checkpoint = tmp_path / "trainer-out" / "checkpoint-10"
    assert (checkpoint / "optimizer.pt").exists()
    (tmp_path / "resumed").mkdir()
    resumed = _run(_example(TRAINER), tmp_path / "resumed", monkeypatch,
                   **saving, **{"trainer.train()": f"trainer.train(resume_from_checkpoint="
                                                   f"{str(checkpoint)!r})"})
    assert resumed["trainer"].state.global_step == TRAINER_STEPS
    assert all(torch.equal(p, q) for p, q in zip(whole["model"].parameters(),
                                                 resumed["model"].parameters()))
    for a, b in zip(whole["opt"].state.values(), resumed["opt"].state.values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- accelerate -------------------------------------------------------------------------------
ACCELERATE = "accelerator.prepare("


def _accelerate(folder, monkeypatch, **replace) -> dict:
    torch.manual_seed(0)
    return _run(_example(ACCELERATE), folder, monkeypatch, **replace)


def test_the_accelerate_example_runs_learns_and_accumulates(tmp_path, monkeypatch):
    scope = _accelerate(tmp_path, monkeypatch)
    opt, model, x, y = scope["opt"], scope["model"], scope["x"], scope["y"]
    # 8 batches an epoch, 20 epochs, a step every 2 batches
    assert all(float(s["step"]) == ACCELERATE_STEPS
               for s in opt.state_dict()["state"].values())
    assert float(torch.nn.functional.cross_entropy(model(x), y).detach()) < 0.5
    assert (tmp_path / "accelerate-out").is_dir()


def test_the_accelerate_example_with_torchs_adamw_ends_where_fusedopts_does(tmp_path,
                                                                             monkeypatch):
    ours = _accelerate(tmp_path, monkeypatch)
    (tmp_path / "torch").mkdir()
    theirs = _accelerate(tmp_path / "torch", monkeypatch,
                         **{"fusedopt.torch.AdamW(": "torch.optim.AdamW("})
    assert isinstance(theirs["opt"].optimizer, torch.optim.AdamW)
    assert isinstance(ours["opt"].optimizer, ft.AdamW)
    assert 0 < _max_diff(ours["model"], theirs["model"]) < VS_TORCH_LOOP["float32"]


def test_accelerate_load_state_restores_fusedopts_state_and_steps_on(tmp_path, monkeypatch):
    saved = _accelerate(tmp_path, monkeypatch)
    (tmp_path / "again").mkdir()
    # the same objects made anew, not trained: load_state gives them the saved state
    fresh = _accelerate(tmp_path / "again", monkeypatch, **{"for epoch in range(20)":
                                                            "for epoch in range(0)"})
    fresh["accelerator"].load_state(str(tmp_path / "accelerate-out"))
    assert all(torch.equal(p, q) for p, q in zip(saved["model"].parameters(),
                                                 fresh["model"].parameters()))
    before = fresh["opt"].state_dict()["state"]
    after = saved["opt"].state_dict()["state"]
    assert before.keys() == after.keys()
    for k in before:
        assert all(torch.equal(before[k][n], after[k][n]) for n in before[k])
    # both step on from there alike
    for scope in (saved, fresh):
        scope["opt"].zero_grad()
        loss = torch.nn.functional.cross_entropy(scope["model"](scope["x"]), scope["y"])
        scope["accelerator"].backward(loss)
        scope["opt"].step()
    assert all(torch.equal(p, q) for p, q in zip(saved["model"].parameters(),
                                                 fresh["model"].parameters()))
