"""Measures the decision points of bitsandbytes' CPU quantizer for its 8-bit dynamic maps and
writes them to fusedopt/memory/bnb_cuts.py (``python -m fusedopt.tools.bnb_cuts --write``;
``--check`` compares instead). Needs bitsandbytes; the library reads the written module only.

bitsandbytes' CPU ``quantize_blockwise`` maps a value normalized by its block's absmax to a
code that never decreases as the value grows, but is not always the nearest entry of the
map (its search is approximate). A non-decreasing map from float32 to codes is fixed by its
255 decision points: the smallest float32 that gets code k or above, for k = 1 .. 255. Each
is found by bisection over the float32 values in [-1, 1] (unsigned map: [0, 1]) in their
order, asking the quantizer itself, all 255 at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TARGET = Path(__file__).resolve().parents[1] / "memory" / "bnb_cuts.py"
_BLOCK = 256


def _order(values: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the floats' order (-0.0 and 0.0 one key apart)."""
    bits = values.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _value(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys < 0, (-(keys + 1)) | 0x80000000, keys)
    return (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32)


def quantize(values: np.ndarray, signed: bool) -> np.ndarray:
    """bitsandbytes' CPU codes of ``values`` (each in [-1, 1]) in blocks whose absmax is 1.0
    (every block's first element is 1.0, so a value is its own normalized value)."""
    import torch
    from bitsandbytes import functional

    per = _BLOCK - 1
    blocks = -(-values.size // per)
    data = np.zeros((blocks, _BLOCK), np.float32)
    data[:, 0] = 1.0
    body = data[:, 1:].reshape(-1)
    body[: values.size] = values
    data[:, 1:] = body.reshape(blocks, per)
    code = functional.create_dynamic_map(signed=signed)
    codes, _ = functional.quantize_blockwise(torch.from_numpy(data.reshape(-1)), code=code,
                                             blocksize=_BLOCK)
    return codes.numpy().reshape(blocks, _BLOCK)[:, 1:].reshape(-1)[: values.size]


def measure(signed: bool) -> np.ndarray:
    """The 255 decision points (float32, non-decreasing) of the signed or unsigned map."""
    wanted = np.arange(1, 256)
    low = np.full(wanted.size, _order(np.float32([-1.0 if signed else 0.0]))[0] - 1)
    high = np.full(wanted.size, _order(np.float32([1.0]))[0])  # code(high) >= k, code(low) < k
    while np.any(high - low > 1):
        middle = (low + high) // 2
        at_least = quantize(_value(middle), signed).astype(np.int64) >= wanted
        high, low = np.where(at_least, middle, high), np.where(at_least, low, middle)
    return _value(high)


def render(cuts: dict[str, np.ndarray]) -> str:
    import bitsandbytes

    version = bitsandbytes.__version__
    lines = [f'"""The decision points of bitsandbytes {version}\'s CPU quantizer for its',
             "8-bit dynamic maps, as float32 bit patterns: a value normalized by its block's absmax",
             "gets the count of points <= it as its code. Measured from the quantizer by",
             'fusedopt/tools/bnb_cuts.py; do not edit."""', ""]
    for name, values in cuts.items():
        words = [f"0x{w:08x}" for w in values.view(np.uint32).tolist()]
        lines.append(f"{name.upper()} = (")
        lines += ["    " + ", ".join(words[i:i + 8]) + "," for i in range(0, len(words), 8)]
        lines.append(")")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {TARGET.name}")
    action.add_argument("--check", action="store_true", help="compare with the written one")
    args = parser.parse_args(argv)
    text = render({"signed": measure(True), "unsigned": measure(False)})
    if args.write:
        TARGET.write_text(text)
        return 0
    same = TARGET.exists() and TARGET.read_text() == text
    print("up to date" if same else f"{TARGET} differs from the quantizer's points")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
