"""``fusedopt demo``: the Keras Adam article's two-layer example, trained with fusedopt.

Forward and backward are written with NumPy (CuPy on a GPU), no deep-learning framework;
the optimizer is any registered one (``fusedopt.get(name)``). With ``compare`` the same
model is trained again from the same weights and data with the unfused backend and, when
Keras is installed, with Keras itself, and the largest weight difference is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import model, train

#: Default run: 200 samples in batches of 10 for 20 epochs = 400 optimizer steps.
EPOCHS = 20
SAMPLES = 200


@dataclass
class DemoResult:
    optimizer: str
    steps: int
    loss_before: float
    loss_after: float
    accuracy_after: float
    epochs: list[tuple[int, float, float]] = field(default_factory=list)
    weights_before: list[np.ndarray] = field(default_factory=list)
    weights_after: list[np.ndarray] = field(default_factory=list)
    max_diff: dict[str, float] = field(default_factory=dict)  # "unfused"/"keras" -> max |dw|
    notes: list[str] = field(default_factory=list)


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b))


def _twin(optimizer, backend: str):
    """A fresh optimizer with ``optimizer``'s config, on ``backend``."""
    return type(optimizer).from_config({**optimizer.get_config(), "backend": backend})


def run_demo(name: str = "adam", epochs: int = EPOCHS, samples: int = SAMPLES, seed: int = 0,
             compare: bool = False, console=None) -> DemoResult:
    import fusedopt

    optimizer = fusedopt.get(name)
    data = model.make_data(samples, seed)
    initial = model.init_params(seed)
    before = model.loss_and_accuracy(np, initial, data.x, data.y)[0]
    result = DemoResult(type(optimizer).__name__, epochs * -(-samples // model.BATCH), before,
                        0.0, 0.0, weights_before=[w.copy() for w in initial])
    def say(text: str) -> None:
        if console is not None:
            console.print(text, markup=False, highlight=False)

    _print_header(console, optimizer, initial, say)

    def on_epoch(epoch, loss, accuracy):
        result.epochs.append((epoch, loss, accuracy))
        say(f"Epoch {epoch}/{epochs} - loss: {loss:.4f} - accuracy: {accuracy:.4f}")

    trained = train.train(optimizer, initial, data, epochs, on_epoch)
    result.weights_after = trained
    result.loss_after, result.accuracy_after = model.loss_and_accuracy(np, trained, data.x,
                                                                       data.y)
    say(f"\nloss on the training data: {before:.4f} before, {result.loss_after:.4f} after "
        f"({result.steps} steps); accuracy {result.accuracy_after:.4f}")
    say(f"first layer's kernel after training:\n{_matrix(trained[0])}")
    if compare:
        _compare(optimizer, initial, data, epochs, result, say)
    return result


def _compare(optimizer, initial, data, epochs, result, say):
    unfused = train.train(_twin(optimizer, "unfused"), initial, data, epochs)
    result.max_diff["unfused"] = _max_diff(result.weights_after, unfused)
    try:
        keras_weights = train.train_keras(optimizer, initial, data, epochs)
    except ImportError:
        result.notes.append("Keras is not installed: compared with the unfused backend only")
    except (ValueError, TypeError) as error:
        result.notes.append(f"Keras could not build the same optimizer: {error}")
    else:
        result.max_diff["keras"] = _max_diff(result.weights_after, keras_weights)
    for other, diff in result.max_diff.items():
        say(f"largest weight difference, fused vs {other}: {diff:.3e}")
    for note in result.notes:
        say(f"note: {note}")


def _matrix(w) -> str:
    return np.array2string(np.asarray(w), precision=3, suppress_small=True, max_line_width=78)


def _print_header(console, optimizer, initial, say):
    if console is None:
        return
    from rich.table import Table

    table = Table(title="Model: two dense layers (batches of 10 samples x 10 features)")
    for column in ("Layer (type)", "Output Shape", "Param #"):
        table.add_column(column, justify="right" if column == "Param #" else "left")
    rows = model.summary()
    for layer, shape, count in rows:
        table.add_row(layer, shape, str(count))
    table.add_row("Total", "", str(sum(r[2] for r in rows)), style="bold")
    console.print(table)
    say(f"optimizer {type(optimizer).__name__}, get_config():")
    for key, value in optimizer.get_config().items():
        say(f"  {key}: {value!r}")
    say(f"first layer's kernel before training:\n{_matrix(initial[0])}\n")
