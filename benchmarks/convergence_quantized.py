"""Convergence with quantized optimizer state: a small character-level transformer language
model trained on the Python standard library's own sources (text that ships with Python),
held-out loss after a fixed number of steps, for each contender and seed.

Contenders: torch.optim.AdamW (float32 state), fusedopt.torch.AdamW with q8 and q4 state
(and "fusedopt q8 bf16 SR": bf16 params, q8 state, stochastic rounding),
bitsandbytes' AdamW8bit, torchao's AdamW8bit and AdamW4bit (run eagerly: their
torch.compile build takes many minutes here; the same operations). Same model init, data
order and hyperparameters per seed.

    python benchmarks/convergence_quantized.py --steps 300 --seeds 0,1,2
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


def run(name, seed, steps, data):
    train, held, vocab = data
    torch.manual_seed(seed)
    model = Model(vocab)
    if "bf16" in name:
        model = model.to(torch.bfloat16)
    opt = make(name, model.parameters())
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = batch(train, generator)
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    evaluation = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        losses = []
        for _ in range(20):
            x, y = batch(held, evaluation)
            losses.append(float(torch.nn.functional.cross_entropy(
                model(x).flatten(0, 1).float(), y.flatten())))
    return statistics.mean(losses)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--contenders", default="fp32 AdamW,fusedopt q8,fusedopt q4,"
                                                "bnb 8-bit,torchao 8-bit,torchao 4-bit")
    args = parser.parse_args()
    data = corpus()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.contenders.split(",")
    results = {n: [run(n, s, args.steps, data) for s in seeds] for n in names}
    base = statistics.mean(results[names[0]])
    print(f"{args.steps} steps, batch {BATCH} x {CONTEXT} characters, seeds {seeds}; "
          f"held-out cross-entropy (nats/char), mean of 20 batches")
    print("| contender | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | vs first |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    for n in names:
        m = statistics.mean(results[n])
        cells = " | ".join(f"{v:.4f}" for v in results[n])
        print(f"| {n} | {cells} | {m:.4f} | {100 * (m / base - 1):+.2f}% |")
    assert all(math.isfinite(v) for r in results.values() for v in r)


if __name__ == "__main__":
    main()
