"""Run the real libraries: Keras 3 (torch backend) and torch.optim, float32, on CPU.

``TORCH`` maps a registered optimizer to its torch.optim class and the translation of
fusedopt's (Keras-named) hyperparameters into torch's argument names.
"""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


def _adam_args(hp):
    return dict(lr=hp["learning_rate"], betas=(hp["beta_1"], hp["beta_2"]), eps=hp["epsilon"],
                weight_decay=hp.get("weight_decay") or 0.0, amsgrad=hp["amsgrad"])


TORCH = {
    "adam": ("Adam", _adam_args),
    "adamw": ("AdamW", _adam_args),
}

KERAS = {"adam": "Adam", "adamw": "AdamW"}


# Adamax, Nadam (torch: NAdam), Lion (Keras only).
def _adamax_args(hp):
    return dict(lr=hp["learning_rate"], betas=(hp["beta_1"], hp["beta_2"]), eps=hp["epsilon"],
                weight_decay=hp.get("weight_decay") or 0.0)


def _nadam_args(hp):
    return dict(_adamax_args(hp), momentum_decay=hp["momentum_decay"],
                decoupled_weight_decay=hp["decoupled_weight_decay"])


TORCH.update({"adamax": ("Adamax", _adamax_args), "nadam": ("NAdam", _nadam_args)})
KERAS.update({"adamax": "Adamax", "nadam": "Nadam", "lion": "Lion"})


def run_keras(name, hp, p0, grads):
    import keras

    from fusedopt._registry import REGISTRY

    # Hyperparameters of the torch convention only (e.g. Nadam's momentum_decay) are not
    # Keras arguments.
    torch_only = {h.name for h in REGISTRY[name].hypers if "keras" not in h.conventions}
    opt = getattr(keras.optimizers, KERAS[name])(
        **{k: v for k, v in hp.items() if k not in torch_only})
    var = keras.Variable(p0.copy(), dtype="float32")
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    return keras.ops.convert_to_numpy(var)


def run_torch(name, hp, p0, grads):
    import torch

    cls, translate = TORCH[name]
    t = torch.tensor(p0.copy(), requires_grad=False)
    opt = getattr(torch.optim, cls)([t], foreach=False, **translate(hp))
    for g in grads:
        t.grad = torch.from_numpy(np.ascontiguousarray(g))
        opt.step()
    return t.numpy()
