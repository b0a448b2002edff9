"""How fusedopt.torch's optimizers answer ``_step_supports_amp_scaling``.

The flag is read by two kinds of code that mean different things by it:

- torch's ``GradScaler.step``: True means "hand me ``grad_scale`` and ``found_inf`` and call
  my step": fusedopt's step then unscales the grads inside its pass and skips a step with an
  inf or NaN grad (on CUDA without waiting for the device). Grads that GradScaler.unscale_
  already unscaled come with ``grad_scale=None`` and GradScaler's ``found_inf``: the step
  skips on that flag and reads the grads as they are.
- frameworks that clip gradients under mixed precision (Lightning's ``MixedPrecision``, for
  ``precision="16-mixed"`` and ``"bf16-mixed"``): True means "this optimizer cannot be given
  grads unscaled beforehand", so they refuse ``gradient_clip_val`` ("does not allow for
  gradient clipping because it performs unscaling of gradients internally") and skip their
  own ``GradScaler.unscale_`` before clipping.

fusedopt can be given unscaled grads, so it answers True to GradScaler.step and False to
everyone else: with a clipping framework, the framework unscales, clips, and GradScaler.step
still hands the step its ``found_inf``; without one, the unscaling stays inside the pass.
"""

from __future__ import annotations

import sys

import torch

_GRAD_SCALER_STEP = torch.amp.GradScaler.step.__code__


class AmpScaling:
    """``_step_supports_amp_scaling``, answered by who asks (see the module's docstring):
    True to torch's GradScaler.step and on the class, False to everyone else."""

    def __get__(self, optimizer, owner=None):
        if optimizer is None:
            return True
        # The caller's frame: GradScaler.step's own code (torch.cuda.amp.GradScaler and
        # FSDP's ShardedGradScaler inherit it), or anyone else's.
        return sys._getframe(1).f_code is _GRAD_SCALER_STEP
