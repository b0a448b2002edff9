"""The grad pre-pass's sums: per tensor, the sum of g^2 and the sum of g - g, declared as an
optimizer declares its reductions and run by the same machinery (the backends' ``reduce``:
fusedopt/backends/cpu/reduce.py, kernels/reduce.cuh, fusedopt/backends/unfused.py).

The step runs them first (fusedopt/engine/step.py) when clipping by norm or an unchecked
loss scale needs them: the sum of g^2 gives the norms from which fusedopt/engine/clip.py
makes the grad scales; the sum of g - g is 0 for a tensor of finite grads and NaN once an
element is inf or NaN (the loss scale's test; the sum of squares cannot tell, since it
overflows for finite float64 grads above ~1e154). Each grad is seen as stored, widened to
float64 and never clipped (its sums decide the clip), and nothing but the grads is read:
``grads_as_stored`` (fusedopt/algorithms/spec.py). A float32 or 16-bit grad's square is
exact in float64, so only the order of the additions can move a sum's last bits.

Not an optimizer: no element pass, no class, not in the registry (so no door and no test
matrix steps it); ``GRAD_SUMS`` is what the backends' ``reduce`` takes.
"""

from __future__ import annotations

from .spec import Reductions, declare


def rule(p, g, k, f):
    """No element pass: the pre-pass changes nothing."""
    return p


def unfused(xp, p, g, s, k, f):
    """No element pass: the pre-pass changes nothing."""


def grad_terms(p, g, k, f):
    """The terms of one grad element: its square, and g - g (0, or NaN if not finite)."""
    return g * g, g - g


def unfused_terms(xp, p, g, s, k, f):
    return g * g, g - g


def _no_scalars(xp, sums, sizes, k):
    return {}


GRAD_SUMS = declare(
    name="grad_sums", class_name="GradSums", rule=rule, unfused=unfused, hypers=(),
    flag_names=(), flags=lambda hp, convention: (), all_flags=((),), slots=(),
    scalar_names=(), scalar_fn=lambda hp, step, convention: {}, public=False,
    reductions=Reductions(names=("g_squares", "g_finite"), rule=grad_terms, unfused=unfused_terms,
                          scalar_names=(), scalars=_no_scalars, grads_as_stored=True))
