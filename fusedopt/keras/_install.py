"""``install()``: Keras' optimizer names ("adam", "sgd", ...) give fusedopt's classes.

``model.compile(optimizer="adam")`` calls ``keras.optimizers.get("adam")``, which calls
``keras.optimizers.deserialize({"class_name": "adam", "config": {}})``. That function
lower-cases a built-in class name and resolves it in one table, the module attribute
``ALL_OBJECTS_DICT`` of ``keras.src.optimizers`` (lower-case name -> class), read at every call.
:func:`install` puts the fused classes in that table under Keras' names, so every lookup by
name returns them: ``"adam"``, ``"Adam"``, and config dicts ``{"class_name": "Adam",
"config": {...}}`` with or without Keras' ``"module": "keras.optimizers"``. The table entries
are registered serializables (fusedopt/keras/_by_name.py), so the table hands Keras'
deserializer their registered names, and construction goes through their ``from_config``:
an optimizer made from a Keras name is a ``fusedopt.keras.Adam`` whose model saves as
Keras' own Adam (loads anywhere), unless its config sets an option Keras' class lacks.

What it leaves alone: an optimizer instance passed to ``compile``, a class referred to
directly (``keras.optimizers.Adam(...)``), and ``keras.saving.load_model`` of a file saved
with Keras' own optimizer (the file names Keras' class, so it loads as Keras' class).

The global custom objects (``keras.saving.get_custom_objects()``) are not the hook: Keras
consults them first, but then looks the name up again by module, and a config dict that names
``"module": "keras.optimizers"`` (what ``keras.optimizers.serialize`` writes) fails there.

:func:`uninstall` puts back exactly the entries :func:`install` replaced.
"""

from __future__ import annotations

import keras

from ._by_name import BY_NAME

#: name -> the class Keras' table held under it before install().
_replaced: dict[str, type] = {}


def _table() -> dict:
    """Keras' name -> class table of ``keras.optimizers.deserialize``, checked."""
    from keras.src import optimizers

    table = getattr(optimizers, "ALL_OBJECTS_DICT", None)
    if not isinstance(table, dict) or not all(name in table for name in _ALWAYS_NAMED):
        raise RuntimeError(
            f"Keras {keras.__version__} resolves optimizer names differently from the Keras "
            "3 releases fusedopt.keras knows (a name -> class table, ALL_OBJECTS_DICT, in "
            "keras.src.optimizers); pass fusedopt.keras.Adam() & co to compile() instead "
            "of a name")
    return table


#: Names every Keras 3 table holds. Keras' table names only some of its classes (3.15 has
#: no "lamb": ``keras.optimizers.get("lamb")`` fails with Keras alone), and install() takes
#: over only the names it holds.
_ALWAYS_NAMED = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam")


def _named(table: dict) -> dict:
    """The fused classes of the names Keras' ``table`` holds."""
    return {name: cls for name, cls in BY_NAME.items() if name in table}


def install() -> None:
    """Make Keras' optimizer names resolve to fusedopt's classes (idempotent)::

        import fusedopt.keras
        fusedopt.keras.install()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        type(model.optimizer)            # fusedopt.keras.Adam

    Names: adam, adamw, sgd, rmsprop, adagrad, adadelta, adamax, nadam, lion, muon (any
    case), and the others Keras' table holds (adafactor, ftrl, ...).
    """
    table = _table()
    for name, cls in _named(table).items():
        if table[name] is not cls:
            _replaced.setdefault(name, table[name])
            table[name] = cls


def uninstall() -> None:
    """Undo :func:`install`: Keras' names give Keras' own classes again."""
    table = _table()
    for name in list(_replaced):
        previous = _replaced.pop(name)
        if table[name] is BY_NAME[name]:
            table[name] = previous


def installed() -> bool:
    """Whether Keras' names currently resolve to fusedopt's classes."""
    table = _table()
    return all(table[name] is cls for name, cls in _named(table).items())
