"""Keras' own optimizer tests (the installed wheel's ``keras/src/optimizers/*_test.py``), run
against fusedopt.keras' classes by tests/keras_peer_suite.py, and once more with Keras' own
classes as the baseline. Every test that passes with Keras' classes passes with fusedopt's.

    python -m pytest -q -s tests/test_keras_peer_suite.py     # -s prints the counts
"""

import collections
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

#: Skip reasons Keras' tests give on the torch backend, and why each cannot apply here.
NOT_ON_TORCH = {
    "can only run with TF backend": "TensorFlow-only (IndexedSlices)",
    "can only run with TensorFlow backend": "TensorFlow-only (tf.Variable)",
    "Requires TF": "TensorFlow-only (tf.train.Checkpoint)",
    "Backend does not support sparse tensors": "Keras' torch backend has no sparse gradients",
}

#: The fusedopt optimizers every module must exercise: a substitution that silently stopped
#: working would leave Keras' classes under test and everything passing.
MODULES = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam",
           "lion", "schedule_free_adamw", "lamb", "ftrl", "adafactor", "muon",
           "optimizer",
           "loss_scale_optimizer", "multi_optimizer")


def _run(tmp_path, *flags):
    out = tmp_path / ("keras.json" if flags else "fusedopt.json")
    env = dict(os.environ, KERAS_BACKEND="torch")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(HERE), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, os.path.join(HERE, "keras_peer_suite.py"),
                           str(out), *flags], env=env, capture_output=True, text=True,
                          timeout=900)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return {r["test"]: r for r in json.loads(out.read_text())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keras-peer")
    return _run(tmp), _run(tmp, "--keras")


def _summary(ours, theirs) -> str:
    counts = collections.Counter()
    lines = []
    for name, record in sorted(ours.items()):
        if record["outcome"] == "passed":
            counts["passed" if record["exercised"] else "passed (Keras' own class)"] += 1
        elif record["outcome"] == "skipped":
            counts["skipped"] += 1
            lines.append(f"  skipped  {name}: {record['reason']}")
        elif theirs.get(name, {}).get("outcome") == "failed":
            counts["cannot run here"] += 1
            lines.append(f"  not here {name}: fails with Keras' own classes too: "
                         f"{theirs[name]['reason']}")
        else:
            counts["failed"] += 1
            lines.append(f"  FAILED   {name}: {record['reason']}")
    head = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return "\n".join([f"Keras' optimizer tests against fusedopt.keras: {head}", *lines])


def test_every_keras_test_that_runs_here_passes(runs):
    ours, theirs = runs
    print("\n" + _summary(ours, theirs))
    failed = {name: r["reason"] for name, r in ours.items() if r["outcome"] == "failed"
              and theirs.get(name, {}).get("outcome") != "failed"}
    assert not failed, failed
    assert set(ours) == set(theirs)  # the same tests collected both ways


def test_skips_are_keras_own_for_the_torch_backend(runs):
    ours, theirs = runs
    for name, record in ours.items():
        if record["outcome"] == "skipped":
            assert any(reason in record["reason"] for reason in NOT_ON_TORCH), record
            assert theirs[name]["outcome"] == "skipped", name  # Keras' classes skip it too


def test_the_substitution_reached_every_module(runs):
    ours, theirs = runs
    exercised = collections.Counter(name.split("_test.py")[0] for name, r in ours.items()
                                    if r["outcome"] == "passed" and r["exercised"])
    import keras.src.optimizers

    folder = os.path.dirname(keras.src.optimizers.__file__)
    shipped = {m for m in MODULES if os.path.exists(os.path.join(folder, f"{m}_test.py"))}
    assert shipped <= set(exercised), exercised
    assert sum(exercised.values()) >= 130, exercised
    # and the baseline ran Keras' classes: it constructed no fusedopt optimizer
    assert not any(r["exercised"] for r in theirs.values())


def test_the_tests_that_once_failed_now_pass(runs):
    """Keras' direct ``_clip_gradients`` tests and the ``stateless_apply`` ones."""
    ours, _ = runs
    clip = [n for n in ours if n.endswith(("test_clip_norm", "test_clip_value",
                                           "test_global_clip_norm"))]
    stateless = [n for n in ours if "stateless" in n]
    assert clip and stateless, "Keras' clipping and stateless_apply tests were not collected"
    assert all(ours[n]["outcome"] == "passed" and ours[n]["exercised"]
               for n in clip + stateless), {n: ours[n] for n in clip + stateless}
