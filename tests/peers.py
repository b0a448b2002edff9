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
    "adam": ("Adam", lambda hp: dict(_adam_args(hp),
                                     decoupled_weight_decay=hp["decoupled_weight_decay"])),
    "adamw": ("AdamW", _adam_args),
}

KERAS = {"adam": "Adam", "adamw": "AdamW", "lamb": "Lamb"}


# --- SGD, RMSprop, Adagrad, Adadelta ----------------------------------------------------------

def _decay(hp):
    return hp.get("weight_decay") or 0.0


TORCH.update({
    "sgd": ("SGD", lambda hp: dict(lr=hp["learning_rate"], momentum=hp["momentum"],
                                   dampening=hp["dampening"], nesterov=hp["nesterov"],
                                   weight_decay=_decay(hp))),
    "rmsprop": ("RMSprop", lambda hp: dict(lr=hp["learning_rate"], alpha=hp["rho"],
                                           eps=hp["epsilon"], momentum=hp["momentum"],
                                           centered=hp["centered"], weight_decay=_decay(hp))),
    "adagrad": ("Adagrad", lambda hp: dict(lr=hp["learning_rate"], lr_decay=hp["lr_decay"],
                                           eps=hp["epsilon"], weight_decay=_decay(hp),
                                           initial_accumulator_value=hp[
                                               "initial_accumulator_value"])),
    "adadelta": ("Adadelta", lambda hp: dict(lr=hp["learning_rate"], rho=hp["rho"],
                                             eps=hp["epsilon"], weight_decay=_decay(hp))),
})
KERAS.update({"sgd": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad", "adadelta": "Adadelta"})


# Adamax, Nadam (torch: NAdam), Lion (Keras only).
def _adamax_args(hp):
    return dict(lr=hp["learning_rate"], betas=(hp["beta_1"], hp["beta_2"]), eps=hp["epsilon"],
                weight_decay=hp.get("weight_decay") or 0.0)


def _nadam_args(hp):
    return dict(_adamax_args(hp), momentum_decay=hp["momentum_decay"],
                decoupled_weight_decay=hp["decoupled_weight_decay"])


TORCH.update({"adamax": ("Adamax", _adamax_args), "nadam": ("NAdam", _nadam_args)})
KERAS.update({"adamax": "Adamax", "nadam": "Nadam", "lion": "Lion", "ftrl": "Ftrl"})


def run_keras(name, hp, p0, grads):
    import keras

    # A hyperparameter of the torch convention only (SGD's dampening...) is not Keras'.
    from fusedopt.algorithms.registry import REGISTRY

    hp = {h.name: hp[h.name] for h in REGISTRY[name].hypers if "keras" in h.conventions}
    opt = getattr(keras.optimizers, KERAS[name])(**hp)
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
        t.grad = torch.from_numpy(np.asarray(g, order="C"))  # a 0-d grad stays 0-d
        opt.step()
    return t.numpy()
