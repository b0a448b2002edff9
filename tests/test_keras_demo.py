"""``fusedopt demo`` runs the article's example in Keras, with fusedopt doing the update."""

import pytest

from fusedopt.tools import cli
from fusedopt.tools.demo import keras_article


def test_demo_runs_the_article_in_keras(capsys):
    assert cli.main(["demo", "--epochs", "2", "--compare"]) == 0
    out = capsys.readouterr().out
    assert "model.compile(optimizer='adam') gives fusedopt's optimizer" in out
    # model.summary(): the article's layers, output shapes for a batch of 10, 132 params.
    assert "dense (Dense)" in out and "(10, 10)" in out and "(10, 2)" in out
    assert "Total params: 132" in out
    assert "model.optimizer is fusedopt.keras.Adam" in out
    for line in ("learning_rate: 0.0010000000474974513", "beta_1: 0.9", "beta_2: 0.999",
                 "epsilon: 1e-07", "amsgrad: False", "use_ema: False"):
        assert line in out  # get_config(), as Keras' Adam prints it
    assert "weights before training:" in out and "weights after 2 epochs (40 steps):" in out
    assert "article/dense/kernel (10, 10):" in out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "20/20" in out  # fit's progress bar
    assert "largest weight difference vs Adam of Keras itself" in out


def test_demo_result_matches_keras_and_trains():
    lines = []
    result = keras_article.run_keras_demo("rmsprop", epochs=3, compare=True, say=lines.append)
    assert result.optimizer == "fusedopt.keras.RMSprop"
    assert result.max_diff_vs_keras < 1e-6
    assert result.history["loss"][-1] < result.history["loss"][0]
    moved = max(abs(a - b).max() for a, b in zip(result.weights_after, result.weights_before))
    assert moved > 1e-3


def test_numpy_demo_behind_a_flag_and_without_keras(capsys, monkeypatch):
    assert cli.main(["demo", "--numpy", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "Epoch 1/1 - loss:" in out and "fusedopt.keras" not in out
    monkeypatch.setattr(keras_article, "keras_ready", lambda: "keras is not installed")
    assert cli.main(["demo", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "note: the NumPy demo runs, not Keras: keras is not installed" in out
    assert "Epoch 1/1 - loss:" in out


def test_keras_demo_needs_the_torch_backend(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert "KERAS_BACKEND=torch" in keras_article.keras_ready()


def test_demo_refuses_a_partial_batch():
    with pytest.raises(ValueError, match="multiple of the batch size 10"):
        keras_article.run_keras_demo(samples=25, say=lambda line: None)


def test_readme_keras_example_runs(capsys):
    import re
    from pathlib import Path

    import fusedopt.keras

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Keras 3"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    try:
        exec(compile(block, "README.md", "exec"), {})
    finally:
        fusedopt.keras.uninstall()
    module, iterations = capsys.readouterr().out.split()
    assert module == "fusedopt.keras.optimizers" and int(iterations) == 100
