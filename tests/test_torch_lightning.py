"""Lightning's mixed precision with gradient clipping, with every fusedopt.torch class.

``Trainer(precision="bf16-mixed" | "16-mixed", gradient_clip_val=...)`` refuses an optimizer
whose ``_step_supports_amp_scaling`` it sees as True ("does not allow for gradient clipping
because it performs unscaling of gradients internally"). fusedopt's optimizers answer True
only to torch's GradScaler.step (fusedopt/torch/_amp.py), so Lightning unscales, clips, and
the step still skips on GradScaler's inf flag. Each run is compared with the same Trainer
run stepped by the torch.optim class (lion_pytorch's Lion): the clip is small enough to bite
at every step, so a clip that did not happen would show.
"""

import warnings

import pytest
import torch
import torch_loops as loops
from tolerances import VS_TORCH_LOOP

import fusedopt.torch as ft
from fusedopt.torch._names import ROWS

L = pytest.importorskip("lightning", reason="the Lightning test needs lightning: "
                        "pip install fusedopt[test]")

STEPS, CLIP = 4, 0.1


class _Model(L.LightningModule):
    def __init__(self, make):
        super().__init__()
        self.make = make
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(loops.FEATURES, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, loops.CLASSES))
        self.norms = []

    def training_step(self, batch, index):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def on_before_optimizer_step(self, optimizer):
        # After Lightning's unscale and before its clip: the norm that the clip cuts.
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))

    def configure_optimizers(self):
        opt = self.make(self.parameters())
        step, self.handed = opt.step, []

        def recorded(*args, **kwargs):  # what GradScaler handed this step, if anything
            self.handed.append((getattr(opt, "grad_scale", "none"),
                                getattr(opt, "found_inf", "none")))
            return step(*args, **kwargs)

        opt.step = recorded
        return opt


def _precision(precision: str) -> dict:
    """The Trainer arguments of ``precision`` on the CPU. Lightning's Trainer turns
    precision="16-mixed" into "bf16-mixed" on the CPU; its plugin, given directly, keeps
    float16 autocast and a GradScaler (torch.amp.GradScaler("cpu")), as on a GPU."""
    if precision == "16-mixed":
        from lightning.pytorch.plugins.precision import MixedPrecision
        return {"plugins": [MixedPrecision("16-mixed", device="cpu")]}
    return {"precision": precision}


def _fit(make, precision):
    model = _Model(make)
    x, y = loops.data()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    trainer = L.Trainer(accelerator="cpu", devices=1, **_precision(precision),
                        gradient_clip_val=CLIP, max_steps=STEPS, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and the like
        trainer.fit(model, data)
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    assert (scaler is not None) == (precision == "16-mixed")
    return model


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", sorted(set(ROWS) - loops.MATRIX_ONLY))  # a model with biases
def test_mixed_precision_with_gradient_clipping_matches_torch(name, precision):
    hp = {"lr": 0.05} if name in ("sgd", "adadelta") else {"lr": 1e-2}
    ours = _fit(lambda ps: loops.training(ft.CLASSES[name](ps, **hp)), precision)
    theirs = _fit(lambda ps: loops.training(loops.peer_class(name)(ps, **hp)), precision)
    assert len(ours.norms) == STEPS and min(ours.norms) > 2 * CLIP  # every step clipped
    if precision == "16-mixed":
        # GradScaler.step handed fusedopt its inf flag, and no scale: Lightning unscaled.
        assert all(scale is None and isinstance(found, torch.Tensor)
                   for scale, found in ours.handed), ours.handed
    torch.testing.assert_close(ours.norms, theirs.norms, rtol=1e-4, atol=0)
    loops.assert_close(ours.net, theirs.net, VS_TORCH_LOOP["float32"])
    start = _Model(None).net
    assert any(not torch.equal(p, q) for p, q in zip(ours.net.parameters(),
                                                     start.parameters()))


def test_the_flag_is_true_to_grad_scaler_and_false_to_everyone_else():
    opt = ft.AdamW([torch.nn.Parameter(torch.ones(2))])
    assert ft.AdamW._step_supports_amp_scaling is True
    assert getattr(opt, "_step_supports_amp_scaling", True) is False
    from lightning.fabric.plugins.precision.amp import _optimizer_handles_unscaling
    assert not _optimizer_handles_unscaling(opt)
