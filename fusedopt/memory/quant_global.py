"""Quantized state in a form that does not depend on how its param is sharded, and back.

A quantized slot's blocks start at its shard's first element (fusedopt/memory/quant.py;
fusedopt/torch/_quantized.py), so its codes and scales mean nothing under another sharding.
Its *global form* has arrays shaped by the whole param alone, so that any sharding of the
param's first dimension (FSDP2's) holds its own part of them, and a checkpoint library that
reshards (torch.distributed.checkpoint) can move them:

- the **values**, decoded (``map[code] * absmax``, float32), shaped as the param;
- the **scales by row**: a float32 array of ``(rows, ceil(row / 128))`` (``rows`` the
  param's first dimension, ``row`` its elements per row, 128 the smallest block of any
  format, so that the shape is every format's), whose entry (i, t) is the absmax of the
  t-th block that starts in row i, and zero where fewer blocks start there. A shard of whole
  rows starts a block at its first element, so its blocks' scales lie in its own rows.

Back into blocks (:func:`to_blocks`): each block of the shard that takes the values takes the
scale filed where it starts and the codes nearest to ``value / scale``, if these decode to
the saved values bit for bit; that holds for every block at the sharding the values were
saved from (codes and scales come back as they were). A block for which it does not hold
(another sharding: the block starts elsewhere, or ends elsewhere) is quantized afresh: its
absmax ``a``, the largest |value| of its saved values, and nearest codes.

**The error of a load at another sharding.** An element of a block quantized afresh decodes
within ``(D + 2**-22) * a`` of its saved value, ``D`` the largest distance from a point of
the map's domain ([-1, 1]; [0, 1] for a non-negative slot) to the map's nearest entry
(:data:`MAP_REACH`), and 2**-22 covering three float32 roundings of at most 2**-24 each
(``value / a``, the thresholds, the midpoints of entries rounded to float32, and the
product ``map[code] * a``); where ``a`` is subnormal, the product's rounding adds up to the
smallest subnormal. A block loaded as saved is exact. These are the errors of one nearest
rounding of the saved values; the saved values were themselves a step's quantized state.
"""

from __future__ import annotations

import numpy as np

from . import quant as _quant
from . import quant_power as _power

#: The smallest block of any quantized format: the scales-by-row array has this many
#: elements of a row per entry, so its shape is the same for every format.
MIN_BLOCK = min(f.block for f in _quant.FORMATS.values())

#: ``D`` of the error bound above, by (format, signed): the largest distance from a point
#: of the domain to the map's nearest entry. The dynamic maps: q8 signed, half the widest
#: gap, 0.9 / 64 in the top decade, and the distance from -1 to the lowest entry,
#: -(1 - 0.9 / 128); unsigned: half the top decade's gap 0.9 / 128. q4 signed: half the
#: top decade's gap 0.9 / 4, and -1 to -(1 - 0.9 / 8); unsigned (k + 1) / 16: from 0 to
#: 1 / 16. The power maps: :func:`_power_reach`.
MAP_REACH = {("q8-dynamic", True): 0.9 / 128, ("q8-dynamic", False): 0.9 / 256,
             ("q8-bitsandbytes", True): 0.9 / 128, ("q8-bitsandbytes", False): 0.9 / 256,
             ("q4", True): 0.9 / 8, ("q4", False): 1 / 16}


def _power_reach(bits: int, signed: bool) -> float:
    """D of a power map (fusedopt/memory/quant_power.py): signed, the distance from -1 to
    the lowest entry -(1 - 1/N)**p (its widest gap, the top one, is as wide, so half of it
    is less); non-negative, half the top gap (1 - (1 - 1/N)**p) / 2 (0 is (1/N)**p from
    the lowest entry)."""
    n, _, p = _power.geometry(signed, bits)
    top = 1.0 - ((n - 1) / n) ** p
    return top if signed else top / 2


MAP_REACH.update({(name, signed): _power_reach(f.bits, signed)
                  for name, f in _quant.FORMATS.items() if f.map == "power"
                  for signed in (True, False)})


def row_shape(shape) -> tuple[int, int]:
    """(rows, elements per row) of a param of ``shape``: its first dimension and the rest
    (a 0-d param is one row of one element)."""
    shape = tuple(int(k) for k in shape)
    if not shape:
        return 1, 1
    rows = shape[0]
    return rows, (int(np.prod(shape[1:])) if rows else 0)


def width(row: int) -> int:
    """Entries a row of the scales-by-row array has (for rows of ``row`` elements)."""
    return -(-int(row) // MIN_BLOCK)


def _starts(blocks: int, block: int, row: int):
    """(row, entry) of each of a shard's ``blocks`` blocks in its scales-by-row rows: block
    b starts at the shard's element b * block."""
    b = np.arange(blocks, dtype=np.int64)
    if blocks == 0:
        return b, b
    r = (b * block) // row
    return r, b - (r * row + block - 1) // block  # minus the first block of row r


def scales_by_row(absmax: np.ndarray, rows: int, row: int, fmt: str) -> np.ndarray:
    """The ``(rows, width(row))`` scales-by-row array of a shard of ``rows`` rows of ``row``
    elements whose blocks (of format ``fmt``) have the scales ``absmax``."""
    table = np.zeros((rows, width(row)), dtype=np.float32)
    r, t = _starts(np.asarray(absmax).size, _quant.FORMATS[fmt].block, row)
    table[r, t] = absmax
    return table


def to_blocks(values: np.ndarray, table: np.ndarray, row: int, fmt: str,
              signed: bool) -> tuple[np.ndarray, int]:
    """The slot buffer (fusedopt/memory/quant.py) of a shard's saved ``values`` (float32,
    whole rows of ``row`` elements, flat) and its rows of the scales-by-row ``table``, and
    how many of its blocks loaded as saved (the others were quantized afresh; see the top)."""
    f = _quant.FORMATS[fmt]
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    n, nb = x.size, f.blocks(x.size)
    r, t = _starts(nb, f.block, row)
    saved = np.asarray(table, dtype=np.float32)[r, t]
    nearest = f.map  # nearest codes whatever the format's rounding: an entry finds itself
    codes = _quant.encode(x, saved, fmt, signed, nearest)
    decoded = _quant.qmap(fmt, signed)[codes] * np.repeat(saved, f.block)[:n]
    same = np.ones(nb * f.block, dtype=bool)
    same[:n] = (decoded.view(np.int32) == x.view(np.int32)) | (np.isnan(decoded) & np.isnan(x))
    kept = same.reshape(nb, f.block).all(axis=1)
    fresh = _quant.block_absmax(x, fmt)
    absmax = np.where(kept, saved, fresh).astype(np.float32)
    if not kept.all():
        codes = np.where(np.repeat(kept, f.block)[:n], codes,
                         _quant.encode(x, fresh, fmt, signed, nearest))
    return _quant.pack(codes, absmax, fmt), int(kept.sum())
