"""Which exponents for the power map (fusedopt/memory/quant_power.py): the error that
quantizing AdamW's moments puts into its update, for candidate maps, on moments taken from
float32 training of benchmarks/convergence_quantized.py's tasks.

Train with torch.optim.AdamW (float32 state) for ``--steps`` steps; then for every tensor
of at least 4096 elements (the ones quantized state covers), quantize exp_avg with the
signed map and exp_avg_sq with the non-negative one (blocks of 256, nearest entry), and
compare the update u = m_hat / (sqrt(v_hat) + eps) computed from the decoded moments with
the float one: the relative error ||u_q - u|| / ||u|| over all those tensors, and the
share of elements whose update moved by more than 10% of the largest |u| in its block.

    python benchmarks/power_map_exponents.py --task chars --steps 100 --seeds 0,1
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import convergence_quantized as cq  # noqa: E402

from fusedopt.memory import quant  # noqa: E402


def power_table(signed, p, zero=False):
    """A q8 power map with exponent ``p`` (non-negative: without zero unless ``zero``)."""
    if signed:
        j = np.arange(256) - 127
        return (np.sign(j) * (np.abs(j) / 128.0) ** p).astype(np.float32)
    j = np.arange(256) if zero else np.arange(1, 257)
    return ((j / (255.0 if zero else 256.0)) ** p).astype(np.float32)


def rounded(x, table):
    """x (float32, flat) quantized in blocks of 256 to the nearest entry of ``table``."""
    n = x.size
    blocks = np.zeros(-(-n // 256) * 256, np.float32)
    blocks[:n] = x
    blocks = blocks.reshape(-1, 256)
    absmax = np.abs(blocks).max(axis=1, keepdims=True)
    normal = np.where(absmax > 0, blocks / np.where(absmax > 0, absmax, 1), 0)
    codes = np.searchsorted(quant.thresholds(table), normal, side="right")
    return (table[np.minimum(codes, 255)] * absmax).reshape(-1)[:n]


CANDIDATES = {
    "dynamic / dynamic": (quant.qmap("q8", True), quant.qmap("q8", False)),
    "power 2 / power 2": (power_table(True, 2), power_table(False, 2)),
    "power 2 / power 4": (power_table(True, 2), power_table(False, 4)),
    "power 3 / power 4": (power_table(True, 3), power_table(False, 4)),
    "power 4 / power 4": (power_table(True, 4), power_table(False, 4)),
    "power 2 / power 6": (power_table(True, 2), power_table(False, 6)),
    "power 2 / power 4 with 0": (power_table(True, 2), power_table(False, 4, True)),
}


def errors(opt, step):
    hp = opt.param_groups[0]
    b1, b2 = hp["betas"]
    eps = hp["eps"]
    out = {}
    for name, (signed, unsigned) in CANDIDATES.items():
        num = den = moved = count = 0.0
        for state in opt.state.values():
            m = state["exp_avg"].numpy().reshape(-1).astype(np.float32)
            if m.size < quant.MIN_QUANTIZED_SIZE:
                continue
            v = state["exp_avg_sq"].numpy().reshape(-1).astype(np.float32)
            c1, c2 = 1 - b1 ** step, 1 - b2 ** step
            u = (m / c1) / (np.sqrt(v / c2) + eps)
            uq = (rounded(m, signed) / c1) / (np.sqrt(rounded(v, unsigned) / c2) + eps)
            num += float(np.sum((uq - u).astype(np.float64) ** 2))
            den += float(np.sum(u.astype(np.float64) ** 2))
            pad = np.zeros(-(-u.size // 256) * 256, np.float32)
            pad[:u.size] = u
            scale = np.repeat(np.abs(pad.reshape(-1, 256)).max(axis=1), 256)[:u.size]
            moved += float(np.sum(np.abs(uq - u) > 0.1 * scale))
            count += u.size
        out[name] = (np.sqrt(num / den), moved / count)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=("chars", "digits"), default="chars")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    task = cq.Chars() if args.task == "chars" else cq.Digits()
    seeds = [int(s) for s in args.seeds.split(",")]
    found = {name: [] for name in CANDIDATES}
    for seed in seeds:
        torch.manual_seed(seed)
        model = task.model()
        opt = torch.optim.AdamW(model.parameters(), **cq.HP)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(args.steps):
            x, y = task.batch(generator)
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, -2), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        for name, value in errors(opt, args.steps).items():
            found[name].append(value)
    print(f"{args.task}, moments after {args.steps} steps, seeds {seeds}")
    print("| signed / non-negative map | update's relative error | elements moved > 10% |")
    print("|---|---:|---:|")
    for name, values in found.items():
        rel = np.mean([a for a, _ in values])
        moved = np.mean([b for _, b in values])
        print(f"| {name} | {rel:.4f} | {100 * moved:.3f}% |")


if __name__ == "__main__":
    main()
