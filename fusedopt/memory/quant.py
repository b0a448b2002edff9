"""Quantized optimizer state: ``state_dtype="q8"`` and ``"q4"`` (and ``"q8-dynamic"``,
``"q4-power"``: the same formats with the other map).

A quantized slot keeps each element as a code (8 bits; q4: 4 bits, two to a byte, the
even element in the low half) that indexes a map of values in [-1, 1] (a non-negative slot:
[0, 1]), in blocks of 256 elements (q4: 128), each with one float32 absmax. An element's
value is ``map[code] * absmax``; a block never straddles two params (each param's blocks
start at its element 0). Blockwise quantization is Dettmers et al., "8-bit Optimizers via
Block-wise Quantization" (arXiv 2110.02861).

**Layout.** One uint8 array per slot holds a param's blocks one after the other, each block
its absmax (4 bytes, little-endian float32) then its codes (256 bytes; q4: 64), the last
block only as long as its elements need: ``4 * blocks + codes`` bytes, bitsandbytes' count.
Each block is self-contained, so a loop that starts at a block's first element finds its
scale and codes from the slot's address and the element index alone.

**Maps** (a slot declares ``nonneg=True`` in its optimizer's spec to get the unsigned one).
Each format (:data:`FORMATS`) names its map; ``state_dtype`` names the format:

- ``"power"`` for q8 (the default) and q4-power (fusedopt/memory/quant_power.py): signed,
  ``sign(j) * (|j| / N)**2`` for j = c - (N - 1), N = 128 (q4: 8); non-negative,
  ``((c + 1) / N)**4``, N = 256 (q4: 16), without zero (as q4's linear map, below). Its
  decode is a multiply and its nearest code one or two square roots and a comparison with
  the two neighbouring midpoints: the CPU step reads no table (fusedopt/backends/cpu/
  codes_power.py), and its codes are exactly those of a search of its float32 table below
  (tests/test_quantized_power.py).
- ``"dynamic"`` for q8-dynamic: the dynamic map of Dettmers (arXiv 1511.04561, 2110.02861) as
  bitsandbytes builds it: a sign, a decimal exponent 10^-e given by leading zeros, and a
  linear fraction whose bits grow as the exponent shrinks, plus 0 and 1. Signed: 127
  negative values, 0 and 128 positive ones, 1.0 the largest; unsigned: 0, 254 positive
  values below 1, and 1. Its codes are bitsandbytes' codes (its checkpoints load here);
  its entries are the exact construction rounded once to float32, within 2 float32 ulps of
  bitsandbytes' table, which rounds along the way (tests/test_quantized_maps.py).
- ``"dynamic"`` for q4 (the default): the same construction in 4 bits (3 exponent bits) for signed slots,
  and for non-negative slots the linear map without zero, (k + 1) / 16 (Li et al., arXiv
  2309.01507: a second moment quantized to zero makes an update of m / eps), as torchao's
  AdamW4bit keeps them.

**Why q8 keeps the power map by default.** Its encode costs no search and its decode no
gather, so the CPU step is not bound by table lookups (benchmarks/RESULTS.md, "Quantized
state: the power map": the step's time and its fraction of the traffic ceiling, q8 against
q8-dynamic). It was made the default by this criterion: on both convergence tasks of
benchmarks/convergence_quantized.py (chars, 3 seeds; digits, 5 seeds; 200 steps) its mean
held-out loss is no worse than the dynamic map's by more than the standard error of the
seeds' paired differences; its mean was lower on both (chars 2.1976 against 2.1986,
digits 0.1047 against 0.1070), by less than the seeds' spread: no worse, not shown better. The exponents (2 for m, 4 for v) were chosen by the error that
quantizing AdamW's moments puts into its update (benchmarks/power_map_exponents.py). q4
keeps the dynamic map: q4-power converged worse on digits (0.1056 against 0.0967, beyond
the paired standard error), better on chars. bitsandbytes' state (the dynamic map) is
q8-dynamic (fusedopt/torch/_quantized.py loads it so).

**Rounding.** A value x of the block with absmax a is stored as the code of the map entry
nearest to ``x / a`` (a float32 division); halfway between two entries (the float32
midpoint, :func:`thresholds`) it takes the upper one (torchao's rule). Stochastic rounding takes the entry below or above with probability
proportional to the distance. ``a`` is the largest |x| of the block, so ``x / a`` lies in
[-1, 1]; a block of zeros has absmax 0 and decodes to zeros; a NaN in a block makes its
absmax NaN (the whole block decodes to NaN, as a float32 state would show its NaN).

q8-bitsandbytes keeps q8-dynamic's map and rounds as bitsandbytes' CPU quantizer does
(:func:`cuts`: its measured decision points in place of the midpoints), so that a run can be
compared with bitsandbytes' code for code; it is not the nearest entry everywhere, so the
half-gap bound above is not its bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import quant_power as _power

#: The ``state_dtype`` spellings of quantized state: a format, with its map.
QUANTIZED = ("q8", "q4", "q8-dynamic", "q4-power", "q8-bitsandbytes")

#: Tensors with fewer elements keep float32 state (bitsandbytes' ``min_8bit_size``).
MIN_QUANTIZED_SIZE = 4096

#: The dtype of a slot that quantized state keeps unquantized (``Slot.float_state``: a
#: point of the param space, as schedule-free's z), what float state gives it by default.
FLOAT_SLOT = "float32"

#: The names of the maps (a format names its map: :data:`FORMATS`).
MAP_NAMES = ("dynamic", "power")


@dataclass(frozen=True)
class Format:
    """A quantized format: bits per code, elements per block, the map's name, and how a
    value is rounded to a code when it is not rounded stochastically: ``"nearest"`` (the
    nearest entry, ties to the upper one) or ``"bitsandbytes"`` (as bitsandbytes' CPU
    quantizer rounds: :func:`cuts`)."""

    name: str
    bits: int
    block: int
    map: str = "dynamic"
    rounding: str = "nearest"

    @property
    def codes_per_byte(self) -> int:
        return 8 // self.bits

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def record(self) -> int:
        """Bytes of one full block: its absmax, then its codes."""
        return 4 + self.block // self.codes_per_byte

    def blocks(self, n: int) -> int:
        return -(-int(n) // self.block)

    def code_bytes(self, n: int) -> int:
        return -(-int(n) // self.codes_per_byte)

    def nbytes(self, n: int) -> int:
        """Bytes of a slot of ``n`` elements."""
        return 4 * self.blocks(n) + self.code_bytes(n)


FORMATS = {"q8": Format("q8", 8, 256, "power"), "q4": Format("q4", 4, 128),
           "q8-dynamic": Format("q8-dynamic", 8, 256, "dynamic"),
           "q4-power": Format("q4-power", 4, 128, "power"),
           "q8-bitsandbytes": Format("q8-bitsandbytes", 8, 256, "dynamic", "bitsandbytes")}


def is_quantized(state: str) -> bool:
    return state in QUANTIZED


def dynamic_map(signed: bool, bits: int = 8, exponent_bits: int | None = None) -> np.ndarray:
    """The dynamic map of ``bits``-bit codes, ascending, float32 (2**bits values).

    Exponent e = 0 .. exponent_bits - 1 gives the decade 10**(e - exponent_bits + 1); in it,
    the fraction's values are the midpoints of an even split of [0.1, 1] into 2**(e + f)
    parts, f = bits - 1 - exponent_bits (one more bit without a sign), each midpoint times
    the decade (and negated, signed). With fewer exponent bits than bits - 1 the codes left
    over split the largest decade once more. Then 0 and 1.0."""
    exponent_bits = bits - 1 if exponent_bits is None else exponent_bits
    fraction_bits = bits - 1 - exponent_bits
    values: list[float] = []

    def decade(parts: int, scale: float):
        edges = 0.1 + 0.9 * np.arange(parts + 1, dtype=np.float64) / parts
        middles = scale * (edges[:-1] + edges[1:]) / 2  # exact, then rounded once
        values.extend(middles.tolist())
        if signed:
            values.extend((-middles).tolist())

    for e in range(exponent_bits):
        parts = 2 ** (e + fraction_bits + (0 if signed else 1))
        decade(parts, 10.0 ** (e - exponent_bits + 1))
    extra = 2 ** fraction_bits - 1
    if extra > 0:
        decade(extra, 10.0 ** (exponent_bits - 1 - exponent_bits + 1))
    values += [0.0, 1.0]
    if len(values) != 2 ** bits:
        raise ValueError(f"a {bits}-bit dynamic map with {exponent_bits} exponent bits has "
                         f"{len(values)} values, not {2 ** bits}")
    return np.sort(np.array(values, dtype=np.float64)).astype(np.float32)


def linear_map(levels: int) -> np.ndarray:
    """(k + 1) / levels for k < levels: a linear map of [0, 1] without zero."""
    return (np.arange(1, levels + 1, dtype=np.float64) / levels).astype(np.float32)


def qmap(fmt: str, signed: bool, name: str | None = None) -> np.ndarray:
    """The map of format ``fmt`` (a name of :data:`FORMATS`) for a signed or non-negative
    slot: the format's own map, or the map ``name`` in its bits."""
    name = FORMATS[fmt].map if name is None else name
    if name not in MAP_NAMES:
        raise ValueError(f"unknown quantization map {name!r}; choose one of {MAP_NAMES}")
    bits = FORMATS[fmt].bits
    if name == "power":
        return _power.power_map(signed, bits)
    if bits == 8:
        return dynamic_map(signed, 8)
    return dynamic_map(True, 4, 3) if signed else linear_map(16)


def thresholds(values: np.ndarray) -> np.ndarray:
    """The decision points of nearest rounding to ``values`` (ascending): the float32
    midpoints of neighbours, padded with +inf to len(values) entries, so that a
    branchless search finds the code as the count of thresholds <= x."""
    v = values.astype(np.float64)
    middles = ((v[:-1] + v[1:]) / 2).astype(np.float32)
    return np.concatenate([middles, np.float32([np.inf])])


def cuts(fmt: str, signed: bool) -> np.ndarray:
    """The decision points of format ``fmt``'s rounding for a signed or non-negative slot
    (ascending float32, padded with +inf to the map's length): a value x (normalized by its
    block's absmax) gets the count of points <= x as its code. Nearest rounding: the
    midpoints (:func:`thresholds`). bitsandbytes' rounding: the points its CPU quantizer
    decides at (fusedopt/memory/bnb_cuts.py, measured from it), which are not always the
    midpoints - its search can land up to 7 entries from the nearest, near 0 of the
    non-negative map - so that q8-bitsandbytes takes the codes bitsandbytes takes."""
    f = FORMATS[fmt]
    if f.rounding == "nearest":
        return thresholds(qmap(fmt, signed))
    from . import bnb_cuts
    points = np.array(bnb_cuts.SIGNED if signed else bnb_cuts.UNSIGNED, np.uint32)
    return np.concatenate([points.view(np.float32), np.float32([np.inf])])


# --- host-side conversions (initial state, checkpoints) ------------------------------------

def codes_and_scales(buffer: np.ndarray, n: int, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes as uint8, one per element; absmax float32 per block) of a slot buffer of
    ``n`` elements (copies)."""
    f = FORMATS[fmt]
    buffer = np.ascontiguousarray(buffer).view(np.uint8).reshape(-1)
    nb = f.blocks(n)
    full = nb * f.record
    padded = np.zeros(full, dtype=np.uint8)
    padded[: buffer.size] = buffer
    records = padded.reshape(nb, f.record)
    absmax = records[:, :4].copy().view("<f4").reshape(nb).astype(np.float32)
    packed = records[:, 4:].reshape(-1)
    if f.bits == 8:
        codes = packed
    else:
        codes = np.empty(packed.size * 2, dtype=np.uint8)
        codes[0::2], codes[1::2] = packed & 0xF, packed >> 4
    return codes[:n].copy(), absmax


def pack(codes: np.ndarray, absmax: np.ndarray, fmt: str) -> np.ndarray:
    """The slot buffer of per-element ``codes`` and per-block ``absmax`` (the inverse of
    :func:`codes_and_scales`)."""
    f = FORMATS[fmt]
    codes = np.asarray(codes, dtype=np.uint8).reshape(-1)
    n, nb = codes.size, f.blocks(codes.size)
    absmax = np.asarray(absmax, dtype=np.float32).reshape(-1)
    if absmax.size != nb:
        raise ValueError(f"{n} codes in blocks of {f.block} need {nb} scales, got "
                         f"{absmax.size}")
    if codes.size and int(codes.max()) >= f.levels:
        raise ValueError(f"{fmt} codes are below {f.levels}, got {int(codes.max())}")
    padded = np.zeros(nb * f.block, dtype=np.uint8)
    padded[:n] = codes
    if f.bits == 4:
        padded = padded[0::2] | (padded[1::2] << 4)
    records = np.zeros((nb, f.record), dtype=np.uint8)
    records[:, :4] = absmax.astype("<f4").view(np.uint8).reshape(nb, 4)
    records[:, 4:] = padded.reshape(nb, f.record - 4)  # not -1: nb is 0 for no elements
    return records.reshape(-1)[: f.nbytes(n)].copy()


def quantize(values: np.ndarray, fmt: str, signed: bool, name: str | None = None) -> np.ndarray:
    """The slot buffer of float ``values`` (flat, in memory order) rounded to nearest, as
    the step stores them; for initial state and conversions on the host."""
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    absmax = block_absmax(x, fmt)
    return pack(encode(x, absmax, fmt, signed, name), absmax, fmt)


def block_absmax(values: np.ndarray, fmt: str) -> np.ndarray:
    """The largest |x| of each block of flat float32 ``values`` (NaN for a block with a NaN)."""
    f = FORMATS[fmt]
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    nb = f.blocks(x.size)
    padded = np.zeros(nb * f.block, dtype=np.float32)
    padded[: x.size] = x
    return np.abs(padded.reshape(nb, f.block)).max(axis=1) if nb else np.zeros(0, np.float32)


def encode(values: np.ndarray, absmax: np.ndarray, fmt: str, signed: bool,
           name: str | None = None) -> np.ndarray:
    """The codes (uint8, one per element) of flat float32 ``values`` in blocks of the
    given scales ``absmax``, rounded to nearest; a block whose scale is not positive (zero,
    NaN) takes the code of 0, a value beyond its scale the last code."""
    f = FORMATS[fmt]
    x = np.asarray(values, dtype=np.float32).reshape(-1)
    nb = f.blocks(x.size)
    padded = np.zeros(nb * f.block, dtype=np.float32)
    padded[: x.size] = x
    blocks = padded.reshape(nb, f.block)
    absmax = np.asarray(absmax, dtype=np.float32).reshape(nb, 1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        normal = np.where(absmax > 0, blocks / absmax, np.float32(0))
    points = cuts(fmt, signed) if name is None else thresholds(qmap(fmt, signed, name))
    codes = np.searchsorted(points, normal, side="right")
    # beyond the last entry only where |x| exceeds its scale (or x / scale is NaN): a
    # given scale that is not the block's absmax; the last entry, not a wrapped code
    return np.minimum(codes.reshape(-1)[: x.size], f.levels - 1).astype(np.uint8)


def dequantize(buffer: np.ndarray, n: int, fmt: str, signed: bool,
               name: str | None = None) -> np.ndarray:
    """The float32 values of a slot buffer of ``n`` elements."""
    f = FORMATS[fmt]
    codes, absmax = codes_and_scales(buffer, n, fmt)
    values = qmap(fmt, signed, name)[codes]
    return (values * np.repeat(absmax, f.block)[:n]).astype(np.float32)


def filled(n: int, fmt: str, signed: bool, value: float) -> np.ndarray:
    """The slot buffer of ``n`` elements all equal to ``value`` (exactly: absmax |value|,
    each code that of 1.0, or -1.0's nearest for a negative value)."""
    return quantize(np.full(n, value, dtype=np.float32), fmt, signed)


# --- records: a slot as its codes and scales (checkpoints, state dicts) --------------------

def to_records(buffer: np.ndarray, n: int, fmt: str) -> dict:
    """A slot buffer as ``{"codes", "absmax"}``: the codes flat in element order (q4: two
    to a byte, the even element in the low half) and the absmax of each block."""
    codes, absmax = codes_and_scales(buffer, n, fmt)
    if FORMATS[fmt].bits == 4:
        padded = np.zeros(2 * FORMATS[fmt].code_bytes(n), dtype=np.uint8)
        padded[:n] = codes
        codes = padded[0::2] | (padded[1::2] << 4)
    return {"codes": codes, "absmax": absmax}


def from_records(codes: np.ndarray, absmax: np.ndarray, n: int, fmt: str,
                 where: str = "state") -> np.ndarray:
    """The slot buffer of :func:`to_records`' arrays, or a ValueError naming ``where`` and
    what does not fit."""
    f = FORMATS[fmt]
    codes = np.asarray(codes)
    absmax = np.asarray(absmax)
    want = (f.code_bytes(n), f.blocks(n))
    if codes.dtype != np.uint8 or absmax.dtype != np.float32 or \
            (codes.size, absmax.size) != want:
        raise ValueError(f"{where}: {fmt} state of {n} elements is {want[0]} uint8 code bytes "
                         f"and {want[1]} float32 scales (blocks of {f.block}), got "
                         f"{codes.size} {codes.dtype} and {absmax.size} {absmax.dtype}")
    codes = codes.reshape(-1)
    if f.bits == 4:
        codes = np.stack([codes & 0xF, codes >> 4], axis=1).reshape(-1)[:n]
    return pack(codes, absmax, fmt)
