"""Many tensors in one step (float32 Adam): fusedopt's list path, one flat buffer, the
FlatParams arena and torch's fused Adam, each buildable alone (for a worker process) or
all in one process.

The model is transformer-like: ``vectors`` vectors of 1k-4k elements and ``matrices``
matrices of 0.25M-1M elements (defaults 170 and 30: 200 tensors, about 22.6M elements),
sizes drawn with a fixed seed and shuffled. benchmarks/bench_multitensor.py times it on the
CPU; fusedopt.tools.gpucheck reuses the shapes on a GPU.
"""

from __future__ import annotations

import numpy as np

from .contenders import Built

#: Element counts of the model's two kinds of tensors (inclusive ranges).
VECTOR_SIZES = (1024, 4096)
MATRIX_SIZES = (262_144, 1_048_576)
VECTORS, MATRICES = 170, 30
SEED = 0
#: One hyperparameter set for every contender (torch's formulas on both sides).
HYPER = dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8)

LIST, TORCH, FLAT, ARENA = "fusedopt list", "torch fused", "fusedopt one buffer", "FlatParams"
NAMES = (LIST, TORCH, FLAT, ARENA)
BUILDER = "fusedopt.tools.bench.multitensor:build"


def model_sizes(vectors: int = VECTORS, matrices: int = MATRICES, scale: float = 1.0,
                seed: int = SEED) -> list[int]:
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([rng.integers(VECTOR_SIZES[0], VECTOR_SIZES[1] + 1, vectors),
                            rng.integers(MATRIX_SIZES[0], MATRIX_SIZES[1] + 1, matrices)])
    rng.shuffle(sizes)
    return [max(1, int(s * scale)) for s in sizes]


def _normal(rng, n):
    return rng.standard_normal(n).astype(np.float32)


def _adam():
    import fusedopt
    return fusedopt.Adam(**HYPER, convention="torch")


def _fusedopt_list(sizes, rng):
    pairs = [(_normal(rng, n), _normal(rng, n)) for n in sizes]
    opt = _adam()
    return lambda: opt.apply_gradients(pairs)


def _flat_buffer(sizes, rng):
    n = int(sum(sizes))
    pairs = [(_normal(rng, n), _normal(rng, n))]
    opt = _adam()
    return lambda: opt.apply_gradients(pairs)


def _arena(sizes, rng):
    import fusedopt
    arena = fusedopt.FlatParams([int(n) for n in sizes])
    arena.adopt([_normal(rng, n) for n in sizes])
    for g in arena.grads:
        g[...] = rng.standard_normal(g.shape)
    opt = _adam()
    return lambda: arena.step(opt)


def _torch(sizes, rng, notes: list[str]):
    try:
        import torch
    except ImportError:
        notes.append("torch is not installed: no torch contender")
        return None
    params = [torch.from_numpy(_normal(rng, n)).requires_grad_() for n in sizes]
    for p in params:
        p.grad = torch.from_numpy(_normal(rng, p.numel()))
    opt = torch.optim.Adam(params, lr=HYPER["learning_rate"],
                           betas=(HYPER["beta_1"], HYPER["beta_2"]), eps=HYPER["epsilon"],
                           fused=True)
    return opt.step


def build(contender: str, sizes: list[int], seed: int = SEED + 1) -> Built:
    """One contender over tensors of ``sizes`` (values from ``seed``)."""
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    makers = {LIST: _fusedopt_list, FLAT: _flat_buffer, ARENA: _arena}
    if contender == TORCH:
        step = _torch(sizes, rng, notes)
    elif contender in makers:
        step = makers[contender](sizes, rng)
    else:
        raise ValueError(f"unknown contender {contender!r}; known: {', '.join(NAMES)}")
    return Built(step, "cpu", notes)
