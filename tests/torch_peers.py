"""torch optimizers written plainly from their papers as ``torch.optim.Optimizer`` classes
with torch.optim's state layout (``step``, then the moments, per param): the peers of the
fusedopt.torch rows whose ``peer`` is empty (no library has LAMB or Ftrl for torch), and of
rows whose real peer keeps another layout (optimi's StableAdamW and Adan), in the
registry-driven torch tests, which check torch.optim's layout (tests/torch_loops.py)."""

from __future__ import annotations

import torch


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2020, Algorithm 2, phi the identity), one tensor at a time:
    Adam's bias-corrected update plus weight_decay * p, scaled by ||p|| / ||update|| (1
    where a norm is 0). State: ``step``, ``exp_avg``, ``exp_avg_sq``; 16-bit params keep
    their moments in their own dtype and compute in float32, as torch.optim does."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, *,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                g = _compute(p.grad) * (-1.0 if group["maximize"] else 1.0)
                w = _compute(p)
                m = _compute(state["exp_avg"]).lerp_(g, 1 - b1)
                v = _compute(state["exp_avg_sq"]).mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                update = update + group["weight_decay"] * w
                w_norm, u_norm = w.norm(), update.norm()
                ratio = (w_norm / u_norm).item() if w_norm > 0 and u_norm > 0 else 1.0
                p.copy_(w - group["lr"] * ratio * update)
                state["exp_avg"].copy_(m)
                state["exp_avg_sq"].copy_(v)
        return loss


class StableAdamW(torch.optim.Optimizer):
    """StableAdamW (Wortsman et al., 2023) with optimi's formulas (debiased betas, lr over
    max(1, RMS(g^2 / max(v, eps^2))), decay 1 - lr_t * wd or, with decouple_lr,
    1 - lr_t / max_lr * wd) and torch.optim's layout: ``step`` per param."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-2, eps=1e-6,
                 decouple_lr=False, max_lr=None, *, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps,
                                      decouple_lr=decouple_lr, max_lr=max_lr,
                                      foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = int(state["step"])
                b1_hat = (b1**t - b1) / (b1**t - 1)
                b2_hat = (b2**t - b2) / (b2**t - 1)
                g, w = _compute(p.grad), _compute(p)
                m = _compute(state["exp_avg"]).lerp_(g, 1 - b1_hat)
                v = _compute(state["exp_avg_sq"]).mul_(b2_hat).addcmul_(g, g, value=1 - b2_hat)
                rms = (g * g / v.maximum(torch.tensor(eps * eps, dtype=v.dtype))).mean().sqrt()
                lr = group["lr"] / max(1.0, rms.item())
                if wd != 0:
                    max_lr = group["max_lr"] if group["max_lr"] is not None else group["lr"]
                    w.mul_(1 - (lr / max_lr if group["decouple_lr"] else lr) * wd)
                p.copy_(w.addcdiv_(m, v.sqrt().add_(eps), value=-lr))
                state["exp_avg"].copy_(m)
                state["exp_avg_sq"].copy_(v)
        return loss


class Adan(torch.optim.Optimizer):
    """Adan (Xie et al., 2022) with optimi's formulas (debiased betas, ``prev_grad`` kept
    negated and set from the first grad, the proximal decay theta /= 1 + lr wd, or with
    decouple_lr lr / max_lr in place of lr; adam_wd: theta *= 1 - lr wd first) and
    torch.optim's layout: ``step`` per param."""

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), weight_decay=2e-2,
                 eps=1e-6, decouple_lr=False, max_lr=None, adam_wd=False, *, foreach=None):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps,
                                      decouple_lr=decouple_lr, max_lr=max_lr,
                                      adam_wd=adam_wd, foreach=foreach))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            max_lr = group["max_lr"] if group["max_lr"] is not None else lr
            rate = (lr / max_lr if group["decouple_lr"] else lr) * wd
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    for key in ("exp_avg", "exp_avg_diff", "exp_avg_sq"):
                        state[key] = torch.zeros_like(p)
                    state["prev_grad"] = -p.grad
                state["step"] += 1
                t = int(state["step"])
                hat = [(b**t - b) / (b**t - 1) for b in (b1, b2, b3)]
                g, w = _compute(p.grad), _compute(p)
                d = _compute(state["prev_grad"]).add_(g)
                m = _compute(state["exp_avg"]).lerp_(g, 1 - hat[0])
                v = _compute(state["exp_avg_diff"]).lerp_(d, 1 - hat[1])
                nesterov = d.mul_(b2).add_(g)
                n = _compute(state["exp_avg_sq"]).mul_(hat[2]).addcmul_(
                    nesterov, nesterov, value=1 - hat[2])
                if wd != 0 and group["adam_wd"]:
                    w.mul_(1 - rate)
                denom = n.sqrt().add_(eps)
                w.addcdiv_(m, denom, value=-lr).addcdiv_(v, denom, value=-lr * b2)
                if wd != 0 and not group["adam_wd"]:
                    w.div_(1 + rate)
                p.copy_(w)
                for key, value in (("exp_avg", m), ("exp_avg_diff", v), ("exp_avg_sq", n),
                                   ("prev_grad", -g)):
                    state[key].copy_(value)
        return loss


class Ftrl(torch.optim.Optimizer):
    """FTRL-Proximal (McMahan et al., 2013, Algorithm 1) in Keras' generalized form (its Ftrl
    docstring), one tensor at a time, under TensorFlow's raw-op names: q = -lr_power,
    n = acc + g^2, linear += g + 2 l2_shrinkage p - (n^q - acc^q) / lr * p, p = (clamp(linear,
    -l1, l1) - linear) / (n^q / lr + 2 (l2 + beta / (2 lr))), after Keras' decay p -= p wd lr.
    State: ``step``, ``accumulator`` (from initial_accumulator_value), ``linear``."""

    def __init__(self, params, lr=1e-3, lr_power=-0.5, initial_accumulator_value=0.1, l1=0.0,
                 l2=0.0, l2_shrinkage=0.0, beta=0.0, weight_decay=0.0, *, maximize=False):
        super().__init__(params, dict(lr=lr, lr_power=lr_power,
                                      initial_accumulator_value=initial_accumulator_value,
                                      l1=l1, l2=l2, l2_shrinkage=l2_shrinkage, beta=beta,
                                      weight_decay=weight_decay, maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            lr, q = group["lr"], -group["lr_power"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["accumulator"] = torch.full_like(
                        p, group["initial_accumulator_value"])
                    state["linear"] = torch.zeros_like(p)
                state["step"] += 1
                g = _compute(p.grad) * (-1.0 if group["maximize"] else 1.0)
                w = _compute(p)
                if group["weight_decay"]:
                    w = w - w * group["weight_decay"] * lr
                acc, z = _compute(state["accumulator"]), _compute(state["linear"])
                n = acc + g * g
                # The powers correctly rounded to the compute dtype (taken in float64): the
                # difference of two of them below cancels, so an ulp of either moves linear
                # far more than an ulp, and torch's own float32 sqrt and pow are off by one
                # in a good share of values on the CPU.
                root = (lambda v: v.double().pow(q).to(v.dtype))
                # Keras' order: one sum of the grad side, then added to linear.
                z = z + ((g + 2 * group["l2_shrinkage"] * w) - (root(n) - root(acc)) / lr * w)
                quadratic = root(n) / lr + 2 * (group["l2"] + group["beta"] / (2 * lr))
                p.copy_((z.clamp(-group["l1"], group["l1"]) - z) / quadratic)
                state["accumulator"].copy_(n)
                state["linear"].copy_(z)
        return loss


def _compute(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in its compute dtype: float32 for 16-bit tensors, else its own."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t.clone()


def _evaluate(closure):
    """The closure's loss, computed with grads on (torch.optim's step does the same)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
