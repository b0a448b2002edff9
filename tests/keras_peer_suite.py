"""Keras' own optimizer tests, from the installed wheel, run against fusedopt.keras' classes.

    python tests/keras_peer_suite.py OUT.json [--keras]

runs the test modules Keras ships (``keras/src/optimizers/<name>_test.py``) with pytest, in
this process, and writes one record per test to OUT.json. Nothing is copied: pytest collects
the installed files, and after collection each module's names for Keras' optimizer classes are
pointed at fusedopt's, the way the module would have imported them:

- ``from keras.src.optimizers.adam import Adam`` (adam_test.py & co): the module global
  ``Adam`` becomes ``fusedopt.keras.Adam``;
- ``from keras.src import optimizers`` (optimizer_test.py): the module global ``optimizers``
  becomes a view of Keras' module whose thirteen optimizer classes are fusedopt's, and
  :func:`fusedopt.keras.install` makes Keras' names (``optimizers.get("sgd")``) give them too.

Each record says whether the test constructed a fusedopt optimizer (``exercised``): a test
of a Keras optimizer that fusedopt.keras lacks, in the same module, runs with Keras' own
class and is counted apart. ``--keras``
runs the same modules unchanged, with Keras' classes: the baseline that tells a test this
installation cannot run (one that fails with Keras' own optimizers too) from a failure.
"""

from __future__ import annotations

import json
import os
import sys
import types

os.environ.setdefault("KERAS_BACKEND", "torch")

#: The test modules of the installed keras that concern the optimizers fusedopt.keras has.
MODULES = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "lion",
           "schedule_free_adamw", "lamb", "ftrl",
           "adafactor", "muon", "optimizer", "loss_scale_optimizer",
           "multi_optimizer", "optimizer_sparse")


def test_files() -> list[str]:
    import keras.src.optimizers as package

    folder = os.path.dirname(package.__file__)
    files = [os.path.join(folder, f"{name}_test.py") for name in MODULES]
    return [f for f in files if os.path.exists(f)]  # an older Keras ships fewer


class Substitute:
    """pytest plugin: fusedopt's classes for Keras' in every collected module, and a count
    of the fusedopt optimizers each test constructs."""

    def __init__(self, substitute: bool = True):
        import keras.src.optimizers as keras_optimizers

        import fusedopt.keras
        from fusedopt.keras._fused import FusedOptimizer

        self.keras_optimizers = keras_optimizers
        self.fused = {name: getattr(fusedopt.keras, name) for name in
                      ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax",
                       "Nadam", "Lion", "ScheduleFreeAdamW", "Lamb", "Ftrl",
                       "Adafactor", "Muon")}
        self.view = types.ModuleType(keras_optimizers.__name__)
        self.view.__dict__.update(vars(keras_optimizers))
        self.view.__dict__.update(self.fused)
        self.constructed = 0
        self.records: list[dict] = []
        self._before = 0
        plugin = self
        original = FusedOptimizer.__init__

        def counted(optimizer, *args, **kwargs):
            plugin.constructed += 1
            original(optimizer, *args, **kwargs)

        FusedOptimizer.__init__ = counted
        self.substitute = substitute
        if substitute:
            fusedopt.keras.install()

    def _substitute(self, module) -> None:
        import keras

        names = vars(module)
        for name, cls in self.fused.items():
            # keras.src.optimizers does not import every class (Lamb): the public name
            keras_class = getattr(self.keras_optimizers, name, None) or getattr(
                keras.optimizers, name)
            if names.get(name) is keras_class:
                names[name] = cls
        if names.get("optimizers") is self.keras_optimizers:
            names["optimizers"] = self.view

    def pytest_collection_modifyitems(self, items):
        if not self.substitute:
            return
        for module in {id(item.module): item.module for item in items
                       if getattr(item, "module", None) is not None}.values():
            self._substitute(module)

    def pytest_runtest_logstart(self, nodeid, location):
        self._before = self.constructed

    def pytest_collectreport(self, report):
        if report.failed:  # a module that does not import is a failure, not a missing test
            self.records.append({"test": report.nodeid.split("/")[-1], "when": "collect",
                                 "outcome": "failed", "exercised": False,
                                 "reason": str(report.longrepr).strip().splitlines()[-1]})

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            if report.skipped:
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(
                    report.longrepr)
            elif report.failed:
                reason = str(report.longrepr).strip().splitlines()[-1][:300]
            else:
                reason = ""
            self.records.append({"test": report.nodeid.split("/")[-1], "when": report.when,
                                 "outcome": report.outcome, "reason": reason,
                                 "exercised": self.constructed > self._before})


def main(out: str, substitute: bool = True) -> int:
    import pytest

    plugin = Substitute(substitute)
    files = test_files()
    # An empty ini file and Keras' folder as rootdir: no project's pytest settings apply.
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-c", os.devnull,
                        "--rootdir", os.path.dirname(files[0]), *files], plugins=[plugin])
    with open(out, "w") as f:
        json.dump(plugin.records, f, indent=1)
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], substitute="--keras" not in sys.argv[2:]))
