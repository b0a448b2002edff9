"""What :func:`~fusedopt.keras.install` puts under Keras' names: models that save as Keras'.

Code written for Keras (``model.compile(optimizer="adam")``) should write files Keras reads:
a model compiled by name after ``install()`` saves its optimizer as Keras' own class
(``{"module": "keras.optimizers", "class_name": "Adam", "config": <Keras' Adam config>}``)
with Keras' variables, so the ``.keras`` file loads where fusedopt is absent and continues
with Keras' Adam. Two classes per optimizer do it:

- :data:`SAVED_AS_KERAS` ``[name]``, the class of the instance: ``fusedopt.keras.Adam`` that
  Keras serializes under Keras' public name. Keras names an object by looking its class up in
  its table of exported classes (``keras.src.api_export.REGISTERED_OBJS_TO_NAMES``, class ->
  ``"keras.optimizers.Adam"``); the subclass has an entry there. Loading uses the other
  direction (name -> class), which is left alone: such a file loads as Keras' Adam.
- :data:`BY_NAME` ``[name]``, the entry of Keras' name table: Keras' ``deserialize`` builds
  an instance through its registered name and ``from_config``, which returns an instance of
  the class above when the config is one Keras' class reads, and of ``fusedopt.keras.Adam``
  itself when it carries fusedopt's own options (``stochastic_rounding``, ``backend``...):
  that model really needs fusedopt, and saves as ``fusedopt>Adam``.

``fusedopt.keras.Adam(...)`` constructed directly saves as ``fusedopt>Adam`` and loads back as
``fusedopt.keras.Adam`` (import ``fusedopt.keras`` first).
"""

from __future__ import annotations

import keras

from . import optimizers
from .optimizers import KERAS_OWN, by_name, saved_as_keras


def needs_fusedopt(config: dict) -> bool:
    """Whether an optimizer config sets an option that Keras' own class lacks."""
    return bool(config.get("stochastic_rounding") or config.get("kahan_summation")
                or config.get("state_dtype") or config.get("backend", "auto") != "auto")


def _exported_names() -> dict:
    from keras.src import api_export

    table = getattr(api_export, "REGISTERED_OBJS_TO_NAMES", None)
    if not isinstance(table, dict):
        raise RuntimeError(
            f"Keras {keras.__version__} names the classes it saves differently from the Keras "
            "3 releases fusedopt.keras knows (a class -> name table, REGISTERED_OBJS_TO_NAMES, "
            "in keras.src.api_export); pass fusedopt.keras.Adam() & co to compile() instead "
            "of a name")
    return table


def _saved_as_keras(fused: type) -> type:
    keras_class = next(c for c in fused.__mro__ if c.__module__.startswith("keras."))
    public = _exported_names().get(keras_class)
    if public is None:
        raise RuntimeError(f"Keras {keras.__version__} does not export {keras_class!r}")
    cls = type(fused.__name__, (fused,), {
        "__module__": optimizers.__name__, "__qualname__": f"saved_as_keras.{fused.__name__}",
        "__doc__": f"``fusedopt.keras.{fused.__name__}``, saved as ``{public}``: what "
                   f"``install()`` makes of the name {fused.__name__.lower()!r}."})
    _exported_names()[cls] = public
    setattr(saved_as_keras, fused.__name__, cls)
    return cls


def _by_name(fused: type, saved_as_keras: type) -> type:
    def from_config(cls, config, custom_objects=None):
        target = fused if needs_fusedopt(config) else saved_as_keras
        return target.from_config(config, custom_objects)

    cls = type(fused.__name__, (fused,), {
        "__module__": optimizers.__name__, "__qualname__": f"by_name.{fused.__name__}",
        "from_config": classmethod(from_config),
        "__doc__": f"Keras' name {fused.__name__.lower()!r} after ``install()``: its "
                   "from_config builds the optimizer."})
    setattr(by_name, fused.__name__, cls)
    return keras.saving.register_keras_serializable(package="fusedopt.install")(cls)


#: Keras' lower-case name -> the class of an optimizer made from it, saved as Keras' class.
SAVED_AS_KERAS = {name: _saved_as_keras(cls) for name, cls in KERAS_OWN.items()}
#: Keras' lower-case name -> what install() puts in Keras' name table.
BY_NAME = {name: _by_name(cls, SAVED_AS_KERAS[name]) for name, cls in KERAS_OWN.items()}
