"""Gathers in the machine code of the CPU's quantized AdamW span, per map: the count of
each gather instruction in the compiled span function (fusedopt/backends/cpu/quantized.py)
of ``fusedopt.AdamW(state_dtype=...)`` for float32 params, and its packed square roots
(the rule's, and the power map's encode).

    python benchmarks/quantized_asm.py --states q8,q8-dynamic
"""

from __future__ import annotations

import argparse
import re

import numpy as np

import fusedopt
from fusedopt.backends.cpu import loop

WATCH = ("vgatherdps", "vgatherqps", "vpgatherdd", "vpgatherqd", "vsqrtps", "vsqrtss")


def counts(state: str) -> dict:
    before = len(loop._SPAN_FUNCTIONS)
    opt = fusedopt.AdamW(learning_rate=1e-3, convention="torch", state_dtype=state,
                         min_quantized_size=0)
    p = np.ones(4096, np.float32)
    opt.apply_gradients([(np.full(4096, 0.1, np.float32), p)])
    made = loop._SPAN_FUNCTIONS[before:]
    asm = "".join(f._library.get_asm_str() for f in made)
    return {op: len(re.findall(rf"\b{op}\b", asm)) for op in WATCH}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--states", default="q8,q8-dynamic")
    args = parser.parse_args()
    print("| state_dtype | " + " | ".join(WATCH) + " |")
    print("|---|" + "---:|" * len(WATCH))
    for state in args.states.split(","):
        c = counts(state)
        print(f"| {state} | " + " | ".join(str(c[op]) for op in WATCH) + " |")


if __name__ == "__main__":
    main()
