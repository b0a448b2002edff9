"""fusedopt.keras refuses what it cannot do in place, with errors that say why and what to do."""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras_fit import build_model, fit
from test_keras_conformance import NAMES

import fusedopt.keras

#: Keras' other backends installed here. None is by default (make test installs torch only;
#: Keras' NumPy backend imports JAX), so the check is also tested with the backend faked.
OTHER_BACKENDS = [b for b in ("jax", "tensorflow") if importlib.util.find_spec(b) is not None]


def _refused_in_a_subprocess(backend):
    code = ("import keras, fusedopt.keras\n"
            "assert keras.backend.backend() == %r\n"
            "try:\n"
            "    fusedopt.keras.Adam()\n"
            "except RuntimeError as error:\n"
            "    print(error)\n"
            "else:\n"
            "    raise SystemExit('constructed on another backend')\n" % backend)
    env = dict(os.environ, KERAS_BACKEND=backend)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "KERAS_BACKEND=torch" in done.stdout and repr(backend) in done.stdout


if OTHER_BACKENDS:  # defined only where it can run: a skip would read as an install failure
    @pytest.mark.parametrize("backend", OTHER_BACKENDS)
    def test_another_backend_refuses_in_a_subprocess(backend):
        _refused_in_a_subprocess(backend)


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
@pytest.mark.parametrize("name", NAMES)
def test_jax_and_tensorflow_are_refused(monkeypatch, backend, name):
    """The same check with the backend faked, for the backends not installed here."""
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    with pytest.raises(RuntimeError) as error:
        getattr(fusedopt.keras, name)()
    message = str(error.value)
    assert f"fusedopt.keras.{name} needs Keras' torch backend" in message
    assert f"runs Keras on {backend!r}" in message and "Set KERAS_BACKEND=torch" in message
    assert f"keras.optimizers.{name}" in message


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta_1=1.5), r"Adam: beta_1 must be in \[0, 1\), got 1.5"),
    (dict(epsilon=-1.0), r"Adam: epsilon must be a finite number >= 0"),
    (dict(backend="unfused"), r"backend must be one of auto, cpu, cuda, got 'unfused'"),
    (dict(clipnorm=1.0, clipvalue=1.0), r"Only one of `clipnorm`"),  # Keras' own check
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fusedopt.keras.Adam(**kwargs)


def _built():
    net = build_model(0)
    optimizer = fusedopt.keras.Adam()
    optimizer.build(net.trainable_variables)
    return net, optimizer


def test_exclude_from_weight_decay_after_build_is_refused():
    _, optimizer = _built()
    with pytest.raises(ValueError, match="must be called before Adam is built"):
        optimizer.exclude_from_weight_decay(var_names=["bias"])


def test_a_replaced_variable_tensor_is_refused():
    import torch

    net, optimizer = _built()
    variable = net.trainable_variables[0]
    variable._value = torch.nn.Parameter(variable.value.detach().clone())
    grads = [keras.ops.ones(v.shape) for v in net.trainable_variables]
    with pytest.raises(RuntimeError, match=r"holds a new tensor since Adam was built"):
        optimizer.apply(grads, net.trainable_variables)


def test_the_per_variable_update_is_never_used():
    net, optimizer = _built()
    variable = net.trainable_variables[0]
    with pytest.raises(RuntimeError, match=r"no longer routes the update through "
                                           r"_backend_update_step"):
        optimizer.update_step(keras.ops.ones(variable.shape), variable, 0.1)


def test_fit_after_a_bad_hyperparameter_change_names_it():
    optimizer = fusedopt.keras.Adam()
    optimizer.beta_2 = 1.0
    with pytest.raises(ValueError, match=r"beta_2 must be in \[0, 1\), got 1.0"):
        fit(optimizer, epochs=1)
    assert np.isfinite(float(optimizer.iterations))
