"""The power map's nearest codes (fusedopt/backends/cpu/codes_power.py, the CPU encode)
against the table rule for every float32 bit pattern: 2^32 inputs per slot kind and
format, both signs, the subnormals, inf and every NaN.

The oracle is fusedopt/memory/quant.py's rule, searched here in the map's own float32
table: the code of x is the count of the float32 midpoints of neighbouring entries that
are <= x (at most the last code), and a NaN takes the last code. tests/test_quantized_power.py
checks the same on dense inputs (every entry and midpoint and the floats beside them, a
stride through [-1, 1]); this script checks all of them: 4.5 min for the four cases on 2
busy cores.

    python benchmarks/power_codes_every_float.py

Prints the count of disagreements per case (0 expected) and exits 1 on any.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from numba import njit, prange

from fusedopt.backends.cpu.codes_power import power_functions
from fusedopt.backends.cpu.storage import bits_float
from fusedopt.memory import quant

CASES = (("q8", 8), ("q4-power", 4))


def checker(nearest, k):
    @njit(parallel=True)
    def disagreements(cuts, last, lo, hi, sign):
        bad = 0
        for i in prange(lo, hi):
            x = bits_float(np.uint32(i) | sign)
            want = last
            if x == x:  # a NaN: the last code
                low, high = 0, cuts.size  # count of cuts <= x by bisection
                while low < high:
                    middle = (low + high) >> 1
                    if cuts[middle] <= x:
                        low = middle + 1
                    else:
                        high = middle
                want = min(low, last)
            if nearest(k, x) != want:
                bad += 1
        return bad
    return disagreements


def main() -> int:
    failed = False
    for fmt, bits in CASES:
        _, nearest, _ = power_functions(bits, (True, False, True, False))
        for k, signed in ((0, True), (1, False)):
            table = quant.qmap(fmt, signed)
            cuts = quant.thresholds(table)[:-1]
            run = checker(nearest, k)
            start, bad = time.perf_counter(), 0
            for sign in (np.uint32(0), np.uint32(0x80000000)):
                for lo in range(0, 1 << 31, 1 << 28):
                    bad += run(cuts, table.size - 1, lo, lo + (1 << 28), sign)
            failed |= bad > 0
            kind = "signed" if signed else "non-negative"
            print(f"{fmt} {kind}: {bad} of 2^32 float32 patterns disagree with the table "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
