"""fusedopt.keras.ScheduleFreeAdamW against keras.optimizers.ScheduleFreeAdamW (Keras 3.15):
the article's model fitted 50 steps from one seed, at Keras' defaults and with non-default
arguments. Keras' class swaps nothing in fit or evaluate (the model's weights are y
throughout, its ``momentum`` variables z): neither does fusedopt's, so ``evaluate`` sees
the same weights and gives the same loss."""

import keras
import numpy as np
import pytest
from keras_fit import data, fit, max_diff, variables, weights
from tolerances import KERAS_FIT

import fusedopt.keras

if not hasattr(keras.optimizers, "ScheduleFreeAdamW"):
    pytest.skip("this Keras has no ScheduleFreeAdamW", allow_module_level=True)

#: 10 epochs of 5 batches: 50 steps.
EPOCHS = 10
SETS = [dict(), dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-6,
                     warmup_steps=7, weight_decay=0.05)]


@pytest.mark.parametrize("hp", SETS, ids=["defaults", "non-default"])
def test_fit_and_evaluate_match_keras(hp):
    ours = fit(fusedopt.keras.ScheduleFreeAdamW(**hp), epochs=EPOCHS)
    theirs = fit(keras.optimizers.ScheduleFreeAdamW(**hp), epochs=EPOCHS)
    start = fit(keras.optimizers.ScheduleFreeAdamW(**hp), epochs=0)
    assert int(ours.optimizer.iterations.numpy()) == 50
    scale = max(float(np.max(np.abs(w))) for w in weights(theirs))
    assert max_diff(weights(ours), weights(theirs)) <= KERAS_FIT * scale
    assert max_diff(weights(start), weights(theirs)) > 1e3 * KERAS_FIT * scale  # it trained
    mine, keras_own = variables(ours.optimizer), variables(theirs.optimizer)
    assert [k.split("/")[-1] for k in mine] == [k.split("/")[-1] for k in keras_own]
    for (key, a), b in zip(mine.items(), keras_own.values()):
        assert max_diff([a], [b]) <= KERAS_FIT * max(1.0, float(np.max(np.abs(b)))), key
    test = data(30, seed=5)
    loss_ours = ours.evaluate(test.x, test.y, verbose=0)
    loss_keras = theirs.evaluate(test.x, test.y, verbose=0)
    np.testing.assert_allclose(loss_ours, loss_keras, rtol=1e-5)


def test_config_is_keras_and_round_trips():
    opt = fusedopt.keras.ScheduleFreeAdamW(learning_rate=0.005, warmup_steps=3, name="sf")
    config = opt.get_config()
    assert config == keras.optimizers.ScheduleFreeAdamW(learning_rate=0.005, warmup_steps=3,
                                                         name="sf").get_config()
    again = fusedopt.keras.ScheduleFreeAdamW.from_config(config)
    assert again.get_config() == config


def test_a_saved_model_continues_bit_for_bit(tmp_path):
    whole = fit(fusedopt.keras.ScheduleFreeAdamW(learning_rate=0.01, warmup_steps=3),
                epochs=4)
    part = fit(fusedopt.keras.ScheduleFreeAdamW(learning_rate=0.01, warmup_steps=3),
               epochs=2)
    part.save(tmp_path / "sf.keras")
    loaded = keras.saving.load_model(tmp_path / "sf.keras")
    assert isinstance(loaded.optimizer, fusedopt.keras.ScheduleFreeAdamW)
    train = data()
    loaded.fit(train.x, train.y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(weights(loaded), weights(whole)):
        np.testing.assert_array_equal(a, b)
