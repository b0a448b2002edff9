"""Convergence with quantized optimizer state on two small tasks that run here in minutes,
held-out loss after a fixed number of steps, for each contender and seed, and its curve.

- ``--task chars``: a character-level transformer language model trained on the Python
  standard library's own sources (text that ships with Python).
- ``--task digits``: an MLP classifier of scikit-learn's packaged digits (8x8 images,
  1797 of them; the ``bench`` extra), 80/20 split.

Contenders: torch.optim.AdamW (float32 state), fusedopt.torch.AdamW with the state_dtype
its name ends in ("fusedopt q8": the power map; "fusedopt q8-dynamic", "fusedopt q4",
"fusedopt q4-power"; and "fusedopt q8 bf16 SR": bf16 params, q8 state, stochastic rounding),
bitsandbytes' AdamW8bit, torchao's AdamW8bit and AdamW4bit (run eagerly: their
torch.compile build takes many minutes here; the same operations). Same model init, data
order and hyperparameters per seed.

    python benchmarks/convergence_quantized.py --task chars --steps 300 --seeds 0,1,2 \
        --plot benchmarks/convergence_chars.png
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sysconfig

import fusedopt.torch  # noqa: F401  (before torch: one OpenMP pool)
import torch

CONTEXT, WIDTH, LAYERS, HEADS, BATCH = 64, 128, 2, 4, 32
HP = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)


def corpus(limit=2_000_000):
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    text = []
    size = 0
    for path in sorted(root.glob("*.py")):
        chunk = path.read_text(encoding="utf-8", errors="replace")
        text.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    data = "".join(text)
    chars = sorted(set(data))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in data], dtype=torch.long)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(chars)


class Model(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, WIDTH)
        self.position = torch.nn.Parameter(torch.zeros(CONTEXT, WIDTH))
        layer = torch.nn.TransformerEncoderLayer(WIDTH, HEADS, 4 * WIDTH, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = torch.nn.Linear(WIDTH, vocab)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(
            CONTEXT))

    def forward(self, x):
        h = self.embed(x) + self.position[: x.shape[1]]
        return self.head(self.blocks(h, mask=self.mask, is_causal=True))


class Digits:
    """scikit-learn's digits: (train x, train y, held x, held y), pixels scaled to [0, 1]."""

    WIDTH = 256

    def __init__(self):
        from sklearn.datasets import load_digits
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(y))
        self.train = x[order[:cut]], y[order[:cut]]
        self.held = x[order[cut:]], y[order[cut:]]

    def model(self):
        return torch.nn.Sequential(torch.nn.Linear(64, self.WIDTH), torch.nn.GELU(),
                                   torch.nn.Linear(self.WIDTH, self.WIDTH), torch.nn.GELU(),
                                   torch.nn.Linear(self.WIDTH, 10))

    def batch(self, generator):
        x, y = self.train
        pick = torch.randint(0, len(y), (64,), generator=generator)
        return x[pick], y[pick]

    def held_out(self, model, batches=None):
        x, y = self.held
        return float(torch.nn.functional.cross_entropy(model(x.to(_dtype(model))).float(), y))


class Chars:
    """The standard library's sources as characters: a causal transformer on them."""

    def __init__(self):
        self.train, self.held, self.vocab = corpus()

    def model(self):
        return Model(self.vocab)

    def batch(self, generator):
        return batch(self.train, generator)

    def held_out(self, model, batches=20):
        evaluation = torch.Generator().manual_seed(1234)
        losses = []
        for _ in range(batches):
            x, y = batch(self.held, evaluation)
            losses.append(float(torch.nn.functional.cross_entropy(
                model(x).flatten(0, 1).float(), y.flatten())))
        return statistics.mean(losses)


def _dtype(model):
    return next(model.parameters()).dtype


def batch(ids, generator):
    starts = torch.randint(0, len(ids) - CONTEXT - 1, (BATCH,), generator=generator)
    x = torch.stack([ids[s: s + CONTEXT] for s in starts])
    y = torch.stack([ids[s + 1: s + CONTEXT + 1] for s in starts])
    return x, y


def make(name, params):
    if name == "fp32 AdamW":
        return torch.optim.AdamW(params, **HP)
    if name == "fusedopt q8 bf16 SR":  # bf16 params, q8 state, stochastic rounding
        return fusedopt.torch.AdamW(params, **HP, state_dtype="q8", stochastic_rounding=True)
    if name.startswith("fusedopt"):
        return fusedopt.torch.AdamW(params, **HP, state_dtype=name.split()[-1])
    if name == "bnb 8-bit":
        import bitsandbytes as bnb
        return bnb.optim.AdamW8bit(params, **HP)
    import torchao.optim
    torch.compile = lambda function, **options: function  # eager: see the docstring
    return (torchao.optim.AdamW8bit if "8" in name else torchao.optim.AdamW4bit)(params, **HP)


def run(name, seed, steps, task, every):
    """(final held-out loss, [(step, held-out loss)] every ``every`` steps)."""
    torch.manual_seed(seed)
    model = task.model()
    if "bf16" in name:
        model = model.to(torch.bfloat16)
    opt = make(name, model.parameters())
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(1, steps + 1):
        x, y = task.batch(generator)
        if x.is_floating_point():
            x = x.to(_dtype(model))
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.flatten(0, -2).float(), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if every and step % every == 0 and step < steps:
            with torch.no_grad():
                curve.append((step, task.held_out(model, 5)))
    with torch.no_grad():
        final = task.held_out(model)
    curve.append((steps, final))
    return final, curve


def plot(path, task, curves, seeds):
    """Each contender's mean held-out curve over the seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for name, per_seed in curves.items():
        steps = [s for s, _ in per_seed[0]]
        mean = [statistics.mean(c[i][1] for c in per_seed) for i in range(len(steps))]
        axes.plot(steps, mean, label=name, linewidth=1.4)
    axes.set_xlabel("step")
    axes.set_ylabel("held-out cross-entropy" + (" (nats/char)" if task == "chars" else ""))
    axes.set_title(f"{task}: mean of seeds {', '.join(map(str, seeds))}")
    axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=("chars", "digits"), default="chars")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="curve point every N steps")
    parser.add_argument("--plot", help="write the curves to this PNG")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--contenders", default="fp32 AdamW,fusedopt q8,fusedopt q4,"
                                                "bnb 8-bit,torchao 8-bit,torchao 4-bit")
    args = parser.parse_args()
    task = Chars() if args.task == "chars" else Digits()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.contenders.split(",")
    runs = {n: [run(n, s, args.steps, task, args.every) for s in seeds] for n in names}
    results = {n: [final for final, _ in r] for n, r in runs.items()}
    base = statistics.mean(results[names[0]])
    what = (f"batch {BATCH} x {CONTEXT} characters; held-out cross-entropy (nats/char), mean "
            "of 20 batches" if args.task == "chars" else
            "batch 64; held-out cross-entropy of the 360 held-out digits")
    print(f"{args.task}: {args.steps} steps, seeds {seeds}, {what}")
    print("| contender | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs first |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    for n in names:
        m = statistics.mean(results[n])
        cells = " | ".join(f"{v:.4f}" for v in results[n])
        print(f"| {n} | {cells} | {m:.4f} | {100 * (m / base - 1):+.2f}% |")
    assert all(math.isfinite(v) for r in results.values() for v in r)
    if args.plot:
        plot(args.plot, args.task, {n: [c for _, c in r] for n, r in runs.items()}, seeds)


if __name__ == "__main__":
    main()
