"""The Keras-style public classes (``fusedopt.Adam`` & co), made from each optimizer's
declaration (fusedopt/algorithms/<family>.py): its class name, docstring, and an ``__init__``
whose signature spells out the Keras arguments with their defaults, in Keras' order, then
Keras' clipping and name, then the arguments only the torch convention has, then the
convention, backend and storage arguments (the rest of :class:`~fusedopt.Optimizer`'s
arguments pass through ``**kwargs``)."""

from __future__ import annotations

from ..algorithms.spec import OptimizerSpec
from .base import Optimizer

_TRAILING = ("convention='keras'", "backend='auto'", "state_dtype=None", "master_weights=False")

#: The arguments every class takes besides its own hyperparameters, added to the end of the
#: "Args:" of each family's docstring.
_COMMON_ARGS = """\
    name: Keras' name. "{name}".
    convention: "keras" or "torch": whose formulas to reproduce.
    backend: "auto" (CuPy arrays -> "cuda", NumPy -> "cpu"), "cuda", "cpu", "unfused".
    state_dtype, master_weights, stochastic_rounding, kahan_summation, seed: how 16-bit
        params and state are kept (fusedopt.Optimizer).
"""


def class_doc(spec: OptimizerSpec) -> str:
    """``spec.doc`` with the arguments every class takes at the end of its "Args:"."""
    head, args, tail = spec.doc.partition("\nArgs:\n")
    if not args:
        return spec.doc
    own, blank, rest = tail.partition("\n\n")
    return (f"{head}{args}{own}\n{_COMMON_ARGS.format(name=spec.keras_name).rstrip()}"
            f"{blank}{rest}")


def public_class(spec: OptimizerSpec) -> type:
    """``fusedopt.<spec.class_name>``: an :class:`Optimizer` for ``spec``."""
    hypers = {h.name: h for h in spec.hypers}
    keras = spec.keras_signature or tuple(h.name for h in spec.hypers
                                          if "keras" in h.conventions)
    torch_only = tuple(h.name for h in spec.hypers if h.name not in keras)
    names = (*keras, "clipnorm", "clipvalue", "global_clipnorm", "name", *torch_only)
    defaults = {**{n: hypers[n].default for n in keras + torch_only},
                "clipnorm": None, "clipvalue": None, "global_clipnorm": None,
                "name": spec.keras_name}
    parameters = ", ".join([f"{n}=__defaults[{n!r}]" for n in names] + list(_TRAILING))
    passed = ", ".join(f"{n}={n}" for n in (*names, "convention", "backend", "state_dtype",
                                            "master_weights"))
    text = (f"def __init__(self, {parameters}, **kwargs):\n"
            f"    Optimizer.__init__(self, {passed}, **kwargs)\n")
    namespace = {"Optimizer": Optimizer, "__defaults": defaults}
    exec(compile(text, f"<fusedopt.{spec.class_name}.__init__>", "exec"), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{spec.class_name}.__init__"
    return type(spec.class_name, (Optimizer,), {
        "__init__": init, "__doc__": class_doc(spec), "__module__": "fusedopt.optimizers",
        "__qualname__": spec.class_name, "spec_name": spec.name})
