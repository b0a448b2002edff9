"""fusedopt.keras.Adafactor against keras.optimizers.Adafactor in model.fit (50 steps, a
float32 model of 2-D kernels and 1-D biases): Keras' arguments and math (g^2 + epsilon_1
averaged, v = r / mean(r) * c, Keras' float32 beta and relative step), its variables
viewed as the engine's factored slots (fusedopt/keras/_factored.py)."""

import keras
import numpy as np
import pytest
from keras_fit import build_model, fit, variables, weights

import fusedopt.keras

EPOCHS = 10  # of 5 batches: 50 steps
#: max |fusedopt - Keras| over max |Keras|, per array, after 50 steps in float32.
RELATIVE = 1e-6

#: Keras' defaults but the learning rate; every argument moved with Keras' weight decay;
#: a long decay, a large floor and an update clip below 1, with global_clipnorm first.
SETTINGS = [dict(learning_rate=0.01),
            dict(learning_rate=0.02, beta_2_decay=-0.5, epsilon_1=1e-20, epsilon_2=1e-2,
                 clip_threshold=0.9, relative_step=False, weight_decay=0.1),
            dict(learning_rate=0.01, beta_2_decay=-0.9, epsilon_1=1e-10, epsilon_2=1e-1,
                 clip_threshold=0.5, global_clipnorm=0.5)]


def _relative(ours, theirs) -> float:
    return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if b.size
               else 0.0 for a, b in zip(ours, theirs))


@pytest.mark.parametrize("hp", SETTINGS, ids=["lr", "every-argument", "clips"])
def test_fits_as_keras_adafactor(hp):
    net = fit(fusedopt.keras.Adafactor(**hp), epochs=EPOCHS)
    twin = fit(keras.optimizers.Adafactor(**hp), epochs=EPOCHS)
    assert type(net.optimizer) is fusedopt.keras.Adafactor
    assert int(net.optimizer.iterations) == int(twin.optimizer.iterations) == 5 * EPOCHS
    assert _relative(weights(net), weights(twin)) <= RELATIVE
    ours, theirs = net.optimizer, twin.optimizer
    # the factors of the kernels and the whole moment of the biases, Keras' own variables
    pairs = [(a, b) for a, b in zip(ours._r + ours._c, theirs._r + theirs._c)
             if len(b.shape)]
    pairs += [(a, b) for a, b, w in zip(ours._v, theirs._v, twin.trainable_variables)
              if len(w.shape) < 2]
    assert len(pairs) == 6  # two kernels' r and c, two biases' v
    got = [keras.ops.convert_to_numpy(a.value) for a, _ in pairs]
    want = [keras.ops.convert_to_numpy(b.value) for _, b in pairs]
    assert _relative(got, want) <= 10 * RELATIVE
    assert [p.split("/")[-1] for p in variables(ours)] == \
        [p.split("/")[-1] for p in variables(theirs)]
    keras.backend.clear_session()
    assert _relative(weights(net), weights(build_model(0))) > 1e3 * RELATIVE  # it trained
