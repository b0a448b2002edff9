"""The oracle of quantized state (``state_dtype="q8"``/``"q4"``), written from the format's
definition in fusedopt/memory/quant.py's docstring, not from its code:

- a slot of n elements is split in blocks of 256 (q4: 128) from element 0;
- an element decodes to ``float32(map[code] * absmax)`` of its block;
- a new state is stored with absmax = the largest |value| of its block, and each code is
  the nearest map entry to ``value / absmax`` (halfway: the upper entry).

The maps themselves are checked against bitsandbytes' and torchao's (tests/test_quantized_maps.py);
the buffer's byte layout is read through ``codes_and_scales``, checked there as well.
"""

from __future__ import annotations

import numpy as np
import reference

from fusedopt.memory import quant

#: Where float32 (the step) and float64 (the oracle) may put a value on either side of a
#: rounding boundary: within this distance of it, relative to the block's absmax.
TIE = 1e-5

#: At most this share of the codes may lie at such stated ties.
TIE_SHARE = 0.01


def decode(buffer, n: int, fmt: str, signed: bool) -> np.ndarray:
    """The float64 values a slot buffer holds: float32(map[code] * absmax)."""
    codes, absmax = quant.codes_and_scales(buffer, n, fmt)
    block = quant.FORMATS[fmt].block
    values = quant.qmap(fmt, signed)[codes]
    return (values * np.repeat(absmax, block)[:n]).astype(np.float32).astype(np.float64)


def nearest_codes(values: np.ndarray, fmt: str, signed: bool):
    """(codes, absmax, normalized) of float64 ``values`` by the definition: per block
    absmax, then the nearest entry of the map to value / absmax, ties to the upper one."""
    block = quant.FORMATS[fmt].block
    n = values.size
    nb = -(-n // block)
    padded = np.zeros(nb * block)
    padded[:n] = values
    absmax = np.abs(padded.reshape(nb, block)).max(axis=1)
    scale = np.repeat(absmax, block)[:n]
    with np.errstate(invalid="ignore", divide="ignore"):
        normal = np.where(scale > 0, values / np.where(scale > 0, scale, 1), 0.0)
    entries = quant.qmap(fmt, signed).astype(np.float64)
    distance = np.abs(normal[:, None] - entries[None, :])
    best = distance.min(axis=1, keepdims=True)
    # the last (upper) entry among the nearest: ties go up
    codes = entries.size - 1 - np.argmax((distance == best)[:, ::-1], axis=1)
    return codes, absmax, normal


def boundaries(fmt: str, signed: bool) -> np.ndarray:
    """The exact midpoints between neighbouring entries of the map (float64)."""
    e = quant.qmap(fmt, signed).astype(np.float64)
    return (e[:-1] + e[1:]) / 2


#: float32's error of a value computed as a difference of larger terms, relative to them.
OPERAND_RTOL = 8 * 2.0**-24


def compare_codes(got_buffer, expected: np.ndarray, fmt: str, signed: bool, what: str,
                  operands: np.ndarray | None = None):
    """The slot buffer against the oracle's quantization of ``expected`` (float64): every
    absmax within float32's error of the oracle's, every code the oracle's except at a
    stated tie (:data:`TIE`), where it is a code on the other side of that boundary.
    ``operands``: for a slot the step computes as a difference of larger terms (Ftrl's
    linear term), their size per element; float32's error is then relative to them, and so
    are the absmax's tolerance and the width of a tie. Returns the number of ties taken."""
    n = expected.size
    codes, absmax = quant.codes_and_scales(got_buffer, n, fmt)
    want, want_max, normal = nearest_codes(expected, fmt, signed)
    block = quant.FORMATS[fmt].block
    slack = np.zeros(n)
    if operands is not None:
        slack = OPERAND_RTOL * np.abs(operands).reshape(-1)
    per_block = np.zeros(want_max.size)
    np.maximum.at(per_block, np.arange(n) // block, slack)
    np.testing.assert_array_less(np.abs(absmax - want_max),
                                 2e-6 * np.abs(want_max) + per_block + 1e-300,
                                 err_msg=f"{what}: block absmax")
    differ = np.flatnonzero(codes.astype(np.int64) != want)
    cuts = boundaries(fmt, signed)
    scale = np.repeat(want_max, block)[:n]
    for i in differ:
        lo, hi = sorted((int(codes[i]), int(want[i])))
        crossed = cuts[lo:hi]  # the boundaries between the two codes
        width = TIE + (slack[i] / scale[i] if scale[i] > 0 else 0.0)
        assert np.all(np.abs(crossed - normal[i]) <= width), (
            f"{what}: element {i} has code {codes[i]}, the oracle {want[i]} "
            f"(value/absmax {normal[i]!r}, boundaries {crossed})")
    assert differ.size <= max(2, TIE_SHARE * n), (
        f"{what}: {differ.size} of {n} codes at ties: more than {TIE_SHARE:.0%}")
    return differ.size


def reference_step(name, p, g, state, t, hp, convention):
    """The float64 reference's step (tests/reference.py)."""
    return reference.step(name, p, g, state, t, hp, convention)
