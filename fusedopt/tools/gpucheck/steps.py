"""The steps ``gpucheck`` times: fusedopt's fused and unfused steps, torch's fused Adam and
AdamW, and a device-to-device copy of the same bytes.

Array code goes through ``xp`` (CuPy on a GPU; NumPy where the test suite runs the CUDA
backend on its host runtime), so the fused and unfused steps are checked in CI.
"""

from __future__ import annotations

import numpy as np

FUSED, UNFUSED, TORCH_FUSED, COPY = "fused", "unfused", "torch fused", "copy"
CONTENDERS = (FUSED, UNFUSED, TORCH_FUSED, COPY)

#: The optimizers compared with torch, with torch's defaults on both sides (torch formulas).
TORCH_CLASSES = {"adam": "Adam", "adamw": "AdamW"}
HYPER = {
    "adam": dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8),
    "adamw": dict(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                  weight_decay=0.01),
}


def numpy_dtype(name: str):
    """np.dtype of a storage type name; 16-bit floats that NumPy lacks come from ml_dtypes."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, name))


def bench_dtypes(optimizer: str = "adam") -> tuple[str, ...]:
    """Storage types the registry declares for ``optimizer``, at most 4 bytes wide (float32
    today; bfloat16 appears here once the registry lists it)."""
    from ...algorithms.registry import lookup

    out = []
    for name in lookup(optimizer).dtypes:
        try:
            if numpy_dtype(name).itemsize <= 4:
                out.append(name)
        except (ImportError, AttributeError, TypeError):
            continue
    return tuple(out)


def arrays(sizes, dtype: str, xp, seed: int = 0):
    """Params and grads of ``sizes`` elements each, small normal values."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((2, 1 << 16)).astype(np.float32)
    dt = numpy_dtype(dtype)
    params, grads = [], []
    for n in sizes:
        block_p = xp.asarray((base[0] * 0.1).astype(dt))
        block_g = xp.asarray((base[1] * 0.01).astype(dt))
        reps = -(-n // block_p.size)
        params.append(xp.ascontiguousarray(xp.tile(block_p, reps)[:n]))
        grads.append(xp.ascontiguousarray(xp.tile(block_g, reps)[:n]))
    return params, grads


def _config(optimizer: str) -> dict:
    """torch's formulas and defaults where torch is the comparison, else Keras' defaults."""
    return {**HYPER[optimizer], "convention": "torch"} if optimizer in HYPER else {}


def fusedopt_step(optimizer: str, params, grads, backend: str):
    """``apply_gradients`` over every (grad, param): backend 'cuda' (one launch per dtype)
    or 'unfused' (array expressions)."""
    import fusedopt

    config = {**_config(optimizer), "backend": backend}
    opt = fusedopt.get({"class_name": optimizer, "config": config})
    pairs = list(zip(grads, params))
    return lambda: opt.apply_gradients(pairs)


def torch_step(optimizer: str, sizes, dtype: str, seed: int = 0):
    """``torch.optim.Adam/AdamW(fused=True)`` over CUDA tensors of ``sizes``."""
    import torch

    hp = HYPER[optimizer]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    kind = getattr(torch, dtype)
    params = [torch.nn.Parameter(torch.randn(n, device="cuda", generator=gen, dtype=kind) * .1)
              for n in sizes]
    for p in params:
        p.grad = torch.randn(p.numel(), device="cuda", generator=gen, dtype=kind) * 0.01
    cls = getattr(torch.optim, TORCH_CLASSES[optimizer])
    kwargs = dict(lr=hp["learning_rate"], betas=(hp["beta_1"], hp["beta_2"]),
                  eps=hp["epsilon"], fused=True)
    if "weight_decay" in hp:
        kwargs["weight_decay"] = hp["weight_decay"]
    opt = cls(params, **kwargs)
    return opt.step


def copy_step(n_bytes: int, xp):
    """A device-to-device copy moving ``n_bytes`` in all (half read, half written)."""
    src = xp.zeros(max(n_bytes // 2, 1), dtype=xp.uint8)
    dst = xp.empty_like(src)

    def step():
        dst.data.copy_from_device_async(src.data, src.nbytes)  # cudaMemcpyAsync, device to device
    return step


def step_bytes(optimizer: str, sizes, dtype: str) -> int:
    """Bytes one step must move over tensors of ``sizes`` (fusedopt/tools/bench/traffic.py)."""
    from ...algorithms.registry import lookup
    from ..bench.traffic import traffic

    spec = lookup(optimizer)
    config = _config(optimizer)
    hp = {**spec.defaults(), **config}
    flow = traffic(spec, spec.flags(hp, config.get("convention", "keras")), dtype)
    return sum(flow.total(n) for n in sizes)
