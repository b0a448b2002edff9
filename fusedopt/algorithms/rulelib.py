"""What an element rule may call, besides arithmetic: the rule language's library.

An element rule (``rule`` in each family's module) is plain Python in a small subset, run by
Numba on the CPU and translated to CUDA C++ (fusedopt/backends/cuda/codegen.py):

- arguments ``p`` (the param), ``g`` (the grad, already clipped and unscaled), one argument
  per state slot named as the slot, ``k`` (the step's scalars, by name: ``k.lr``) and ``f``
  (the variant's flags, by name: ``f.flavor``), all values in the compute type (float32 for
  16-bit and float32 params, float64 for float64 ones);
- statements: assignment to a name (a tuple of names only from a helper below), ``if`` /
  ``elif`` / ``else``, and one ``return p, <slots...>`` as the last statement;
- expressions: ``+ - * /``, unary ``-``, comparisons, ``and`` / ``or`` / ``not``, ``a if c
  else b``, :func:`sqrt`, ``abs``, :func:`power` (a value to a scalar's power), the helpers below, the flavour constants, and integer
  literals in comparisons only. A float literal is refused: under Numba it would turn
  float32 math into float64, so constants such as ``1 - beta`` arrive as scalars.

``if`` on a flag is decided at compile time on both backends (the flags are template
arguments in CUDA and constants of the compiled loop on the CPU), so each variant's code
holds only its own branch. Every value a rule returns is stored; a slot the variant does not
have is neither loaded (it reads as 0) nor stored.
"""

from __future__ import annotations

import numpy as np

from ..constants import TORCH_L2

#: The square root in the compute type (NumPy's keeps float32 float32, under Numba too).
sqrt = np.sqrt
#: ``power(x, y)``, x to the power y in the compute type (Ftrl's accumulator to
#: ``-learning_rate_power``, which Keras takes in the variable's dtype): NumPy's under Numba
#: keeps float32 float32 (libm's powf); the CUDA rule takes ``pow`` of the compute type
#: (CUDA's powf for float32, both within about an ulp).
power = np.power


def weight_decay(flavor, p, g, lr, wd, wd_factor):
    """The weight-decay flavour ``flavor`` (fusedopt/constants.py) applied to param ``p`` and
    grad ``g``: returns the new ``(p, g)``. L2 adds ``wd * p`` to the grad, skipped for
    wd = 0 as torch skips it (an inf param times 0 would be NaN). The decoupled flavours,
    Keras' and torch's, scale the param by ``wd_factor`` (1 for wd = 0); they differ in how
    the host rounds that factor (fusedopt/algorithms/hyper.py, ``decay_scalars``)."""
    if flavor == TORCH_L2:
        if wd != 0:
            g = g + wd * p
    else:
        p = p * wd_factor
    return p, g


def fma(a, b, c):
    """``a * b + c`` rounded once (a fused multiply-add): where a peer's kernels use one
    (torch's ``lerp`` and ``add`` with ``alpha`` on the CPU) and the result must match it
    bit for bit. The CPU loop runs LLVM's ``fma``; as plain Python (the unfused
    expressions) it rounds twice."""
    return a * b + c


#: Functions a rule may call that the CUDA translator inlines from their Python source.
HELPERS = {"weight_decay": weight_decay}
#: Functions a rule may call that map to a CUDA function of the same meaning.
BUILTINS = {"sqrt": "sqrt", "abs": "fabs", "power": "pow", "fma": "fma"}
#: How many arguments each of :data:`BUILTINS` takes (one where not listed).
ARITY = {"power": 2, "fma": 3}


# --- for the unfused expressions (whole arrays, in place) ----------------------------------

def decay_in_place(flavor, p, g, lr, wd, wd_factor):
    """:func:`weight_decay` on whole arrays: ``p`` is decayed in place; returns the (possibly
    new) grad."""
    if flavor == TORCH_L2:
        if wd != 0:
            g = g + wd * p
    else:
        p *= wd_factor
    return g
