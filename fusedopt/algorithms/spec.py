"""What an optimizer is, declared once: :class:`OptimizerSpec` and :func:`declare`.

A family's module (fusedopt/algorithms/adam.py & co) declares one spec per optimizer with
:func:`declare`. Everything else reads it: the public classes and the torch and Keras doors
(names, defaults, state keys), the engine (checks, flags, slots, scalars), the CPU backend
(which runs ``rule`` through Numba), the CUDA kernels (generated from ``rule``), the unfused
baseline (``unfused``), the test matrix and the benchmark sweep.
"""

from __future__ import annotations

import sys
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..constants import MAX_SLOTS
from ..memory.storage import CUDA_TYPES, PARAM_DTYPES, Storage, all_storages, default_state_dtype

# The hyperparameters families share, their checks and the weight-decay scalars derived
# from them live in hyper.py; families import them from here, with declare.
from .hyper import (
    ADAM_LIKE,
    BETA,
    DECAY_SCALARS,
    DECOUPLED,
    EPSILON,
    L2_FLAVORS,
    LEARNING_RATE,
    MOMENTUM,
    TORCH_ONLY,
    WEIGHT_DECAY,
    Hyper,
    at_least,
    boolean,
    decay_scalars,
    flavor,
    in_range,
    learning_rate,
    optional,
)

CONVENTIONS = ("keras", "torch")

#: Param dtypes every optimizer supports (fusedopt/memory/storage.py: grads, state, masters).
DTYPES = PARAM_DTYPES


@dataclass(frozen=True)
class Slot:
    """A state slot: its name (also the rule's argument for it, and the Keras-style state
    key), the flag that must be set for the variant to have it (None: always), whether
    it starts as a copy of the param (schedule-free's z) rather than ``slot_init``, whether
    its values are never negative (``nonneg``: a second moment, an accumulator of squares),
    so that quantized state (``state_dtype="q8"``) keeps it with an unsigned map, which
    spends the sign's bit on resolution, whether it stays float under quantized state
    (``float_state``: a point of the param space, as schedule-free's z and kept y, whose
    codes' relative error would move the weights themselves; it is kept in
    ``quant.FLOAT_SLOT``, the others in the quantized format), and its ``shape``: None for
    the param's, or a factored kind of fusedopt/memory/factored.py ("row", "col": the
    factors of a param of rank >= 2; "full": a param of rank < 2's whole second moment). A
    slot a param's rank does not have is an empty array."""

    name: str
    when: str | None = None
    from_param: bool = False
    nonneg: bool = False
    shape: str | None = None
    float_state: bool = False


@dataclass(frozen=True)
class Factored:
    """A second moment kept as a row and a column factor for params of rank >= 2 (Adafactor,
    Shazeer & Stern, 2018) and whole for the others (fusedopt/engine/reductions.py runs it).

    - ``row``, ``col``, ``full``: the names of the three slots (shapes "row", "col", "full");
    - ``square(g, k, f)``: the term averaged along rows and columns (and moved into
      ``full``), ``moment(old, new, k, f)``: the moving average of one value,
      ``estimate(r, c, m, k, f)``: an element's second moment from its row and column
      factors and its slice's denominator ``m``; in the rule language, without helpers,
      and run on whole arrays too (the unfused backend, the factors' update);
    - ``denominator(xp, row_mean, k, f)``: ``m`` of each slice from the mean of its new
      row factors (float64 arrays). The factors move towards ``sum / n`` of ``square``
      along their dimension, summed in float64 and rounded once to the compute type.

    The element and reduction rules then read, as their ``full`` argument, each element's
    second-moment estimate after this step (the other two read 0).
    """

    row: str
    col: str
    full: str
    square: Callable
    moment: Callable
    estimate: Callable
    denominator: Callable


@dataclass(frozen=True)
class StateScalar:
    """A 0-d entry of a param's torch state that torch carries from step to step and the
    fused step derives from the step count instead (NAdam's ``mu_product``, ASGD's ``eta``
    and ``mu``): ``value(hp, steps)`` is what torch holds after ``steps`` steps of a param
    (0: its initial value) with the registry hyperparameters ``hp``; ``what`` names it in
    the error for a checkpoint that holds another value (off by more than ``rel_tol`` /
    ``abs_tol``, as ``math.isclose``)."""

    key: str
    value: Callable[[Mapping[str, Any], int], float]
    what: str
    rel_tol: float = 0.0
    abs_tol: float = 1e-6


@dataclass(frozen=True)
class Reductions:
    """Per-tensor sums an optimizer needs before its element pass (LAMB's norms, StableAdamW's
    RMS), and the per-tensor scalars made from them (fusedopt/engine/reductions.py runs them).

    - ``names``: the terms summed over each tensor, in float64 (at most
      :data:`MAX_REDUCTIONS`);
    - ``rule(p, g, <slots>, k, f)``: the terms of one element, in the rule language
      (fusedopt/algorithms/rulelib.py), ending in ``return a, b``; it sees what the element
      rule sees (the grad clipped and unscaled, the state before this step) and writes
      nothing; ``unfused(xp, p, g, s, k, f)``: the same terms as whole arrays;
    - ``scalar_names``: the per-tensor scalars the element rule reads as ``k.<name>``
      after the step's own; ``scalars(xp, sums, sizes, k)``: them, from ``sums`` (name ->
      float64 array, one value per tensor), the tensors' element counts and the step's
      scalars ``k`` (float64, by name), as float64 arrays on the sums' device;
    - ``grads_as_stored``: True for sums of the grads as they are stored (the grad
      pre-pass, fusedopt/algorithms/gradsums.py, whose sums decide the clip): the rule
      then reads only ``g``, widened to float64 and neither scaled nor clipped, and
      nothing else is loaded.
    """

    names: tuple[str, ...]
    rule: Callable
    unfused: Callable
    scalar_names: tuple[str, ...]
    scalars: Callable
    grads_as_stored: bool = False


#: Terms one reduction pass sums per tensor.
MAX_REDUCTIONS = 2


@dataclass(frozen=True)
class Orthogonalized:
    """A step that transforms each 2-D update as a whole matrix between two element passes
    (Muon's Newton-Schulz orthogonalization; fusedopt/engine/orthogonal.py runs it).

    - ``momentum``: the first pass, a spec whose rule ``(p, g, <slots>, u, k, f)`` reads
      the optimizer's slots and writes them and ``u``, the update to transform (a buffer
      of the step, not state: every tensor's ``u`` is one matrix of a stack of its shape);
    - ``transform(ops, stack, hp, convention)``: the stack (count, rows, cols) of ``u``
      transformed, through ``ops`` (the array library's matmuls:
      fusedopt/backends/matmul.py), as an array the stack's dtype can take;
      ``dtype(convention, stack_dtype)``: the dtype the transform computes in;
    - ``weight``: the second pass, a spec whose rule ``(p, g, k, f)`` reads the transformed
      update as ``g`` and steps the param; its scalars are the optimizer's and then
      ``scale_names``, one value per tensor from ``scales(hp, shape, convention, k)``
      (the shape-dependent step size).
    """

    momentum: "OptimizerSpec"
    transform: Callable
    dtype: Callable
    weight: "OptimizerSpec"
    scale_names: tuple[str, ...]
    scales: Callable


@dataclass(frozen=True, eq=False)
class OptimizerSpec:
    """An optimizer as every layer sees it (made by :func:`declare`).

    - ``flag_names`` / ``flags(hp, convention)``: the variant, as named ints (the CUDA
      template arguments after the storage; constants of the CPU loop), the first always
      the weight-decay flavour; ``all_flags``: every variant the runtime can request.
    - ``slot_decls``: the state slots with the flag each needs; ``slots(flags)``: the names
      a variant has, in kernel order. ``slot_init(hp)``: their initial value.
    - ``scalar_names`` / ``scalar_fn(hp, step, convention)``: the per-step scalars by name,
      computed in float64 on the host for 1-based ``step``; the engine's scalar phase
      orders them as ``scalar_names`` into a row of the launch (fusedopt/engine/step.py).
    - ``rule``: the element rule (fusedopt/algorithms/rulelib.py says its language);
      ``unfused``: the same math as whole-array expressions, the baseline.
    - ``check(hp, convention)``: raises ValueError for hyperparameters that each pass their
      own check but not together.
    - ``running`` / ``advance(hp, step, running)``: optimizer-level scalars kept per
      hyperparameter group across steps (schedule-free's lr_max and weight_sum), their
      values before any step and after applied step ``step`` (``running`` None: as if
      every earlier step had had ``hp``, what a fresh engine of ``fusedopt.functional``
      knows); ``scalar_fn`` sees them in ``hp`` when known. None: the scalars are a
      function of the hyperparameters and the step alone.
    - ``unread(flags)``: the operands ("p", "g" or a slot) a variant's rule does not read
      (the machine-code gate counts the loads a vector step needs from it): schedule-free's
      switch writes y without reading it, and restoring y reads neither p nor z.
    - ``public``: False for a pass that other optimizers run (schedule-free's train/eval
      switch): no class of its own in any door; the engine and ``functional`` step it by
      its registry name.
    - ``switch``: (registry name, hyperparameter): the optimizer whose rule moves the
      params between the point a step needs and the point to evaluate (schedule-free's
      train/eval, fusedopt/engine/modes.py), and which of ours is its ``beta_1``.
    - ``keras_signature``: the Keras-style class's arguments in order (default: ``hypers``'
      Keras ones); ``doc``: its docstring. ``torch`` / ``keras``: what those doors need
      (fusedopt/torch/_names.py, fusedopt/keras/optimizers.py read them); None: no class.
    - ``reductions``: the per-tensor sums and scalars the rule needs (:class:`Reductions`),
      or None for an elementwise optimizer. ``matrix``: the passes and the matrix
      transform of an optimizer that transforms whole 2-D updates (:class:`Orthogonalized`,
      Muon); ``rule`` is then its first pass without the update buffer. ``Scalars`` (``k``) then holds the step's
      scalars followed by the per-tensor ones.
    - ``factored``: a second moment factored along rows and columns (:class:`Factored`),
      or None.
    """

    name: str
    class_name: str
    keras_name: str
    kernel: str
    hypers: tuple[Hyper, ...]
    flag_names: tuple[str, ...]
    flags: Callable[[Mapping[str, Any], str], tuple[int, ...]]
    all_flags: tuple[tuple[int, ...], ...]
    slot_decls: tuple[Slot, ...]
    scalar_names: tuple[str, ...]
    scalar_fn: Callable[[Mapping[str, Any], int, str], Mapping[str, float]]
    rule: Callable
    unfused: Callable
    slot_init: Callable[[Mapping[str, Any]], float] = lambda hp: 0.0
    check: Callable[[Mapping[str, Any], str], None] = lambda hp, convention: None
    unread: Callable[[tuple], tuple] = lambda flags: ()
    running: Mapping[str, float] | None = None
    advance: Callable | None = None
    switch: tuple[str, str] | None = None
    public: bool = True
    dtypes: tuple[str, ...] = DTYPES
    keras_signature: tuple[str, ...] = ()
    doc: str = ""
    torch: Mapping[str, Any] | None = None
    keras: Mapping[str, Any] | None = None
    reductions: Reductions | None = None
    factored: Factored | None = None
    matrix: Orthogonalized | None = None
    Scalars: type = field(default=None, repr=False)
    Flags: type = field(default=None, repr=False)

    def slots(self, flags: tuple[int, ...]) -> tuple[str, ...]:
        named = dict(zip(self.flag_names, flags))
        return tuple(s.name for s in self.slot_decls if s.when is None or named[s.when])

    def signed_slots(self, flags: tuple[int, ...]) -> tuple[bool | None, ...]:
        """For each slot of ``slots(flags)``, the map quantized state keeps it with: True
        (signed) where it may hold negative values, False (unsigned) where it never does,
        None where it is not quantized at all (``float_state``)."""
        named = dict(zip(self.flag_names, flags))
        return tuple(None if s.float_state else not s.nonneg
                     for s in self.slot_decls if s.when is None or named[s.when])

    @property
    def max_slots(self) -> int:
        return max(len(self.slots(f)) for f in self.all_flags)

    def named_flags(self, flags: tuple[int, ...]):
        return self.Flags(*flags)

    def entry(self, storage: Storage | str, flags: tuple[int, ...]) -> str:
        """The CUDA name expression for this variant and storage, e.g.
        ``adam<__nv_bfloat16, __nv_bfloat16, float, 0, 0, 1>``. A dtype name stands for
        its default storage (grads of the param's dtype, default state, no master)."""
        if isinstance(storage, str):
            storage = Storage(storage, storage, default_state_dtype(storage))
        return f"{self.kernel}<{', '.join([storage.template_args(), *map(str, flags)])}>"

    @property
    def row_names(self) -> tuple[str, ...]:
        """The fields of ``k``: the step's scalars, then the per-tensor ones."""
        extra = self.reductions.scalar_names if self.reductions is not None else ()
        return (*self.scalar_names, *extra)

    def slot_shapes(self, flags: tuple[int, ...]) -> tuple[str | None, ...]:
        """The shape kind of each of the variant's slots (None: the param's)."""
        kinds = {s.name: s.shape for s in self.slot_decls}
        return tuple(kinds[name] for name in self.slots(flags))

    @property
    def on_cuda(self) -> bool:
        """Whether its own rule has CUDA kernels: every optimizer but one with a matrix
        transform, whose two passes have theirs (Muon: cuda/launch.py ``matrix_entries``);
        with reductions, a reduction kernel too; a factored moment, kernels/factored.cuh."""
        return self.matrix is None

    def entries(self) -> list[tuple[Storage, tuple[int, ...], str]]:
        """Every (storage, flags, name expression) the runtime can request (none for an
        optimizer without CUDA kernels, :attr:`on_cuda`; a factored moment's plain only)."""
        if not self.on_cuda:
            return []
        return [(st, f, self.entry(st, f)) for st in all_storages()
                if st.param in self.dtypes and (self.factored is None or st == Storage(
                    st.param, st.param, st.param)) for f in self.all_flags]

    @property
    def reduce_kernel(self) -> str | None:
        """The CUDA family of the reduction phase (``kernels/<family>_reduce.cu``, generated
        from ``reductions.rule``), or None for an elementwise optimizer and one without
        CUDA kernels."""
        return None if self.reductions is None or not self.on_cuda else f"{self.kernel}_reduce"

    def reduce_entry(self, storage: Storage | str, flags: tuple[int, ...]) -> str:
        """The reduction kernel's name expression for this variant and storage (the
        template arguments of :meth:`entry`)."""
        return self.reduce_kernel + self.entry(storage, flags)[len(self.kernel):]

    def reduce_entries(self) -> list[str]:
        """Every reduction entry point the runtime can request (none without reductions)."""
        if self.reductions is None:
            return []
        if self.reductions.grads_as_stored:
            return [self.stored_entry(d, n) for d in PARAM_DTYPES for n in range(MAX_SLOTS + 2)]
        return [self.reduce_entry(st, f) for st, f, _ in self.entries()]

    def stored_entry(self, grad_dtype: str, n_slots: int) -> str:
        """The reduction kernel of the grads as stored (``grads_as_stored``): grads of
        ``grad_dtype`` in a table of ``n_slots`` slot rows (an optimizer's slots and its
        master slot: at most MAX_SLOTS + 1), e.g. ``gradsums_reduce<float, 3>``."""
        return f"{self.reduce_kernel}<{CUDA_TYPES[grad_dtype]}, {n_slots}>"

    def tensor_scalars(self, xp, row: tuple, sums, sizes) -> list:
        """The per-tensor scalars (``reductions.scalar_names``, in order), each a float64
        array of one value per tensor on ``sums``' device (``xp`` its array module), from
        ``sums`` (one row per reduction term), the tensors' element counts ``sizes`` (on
        the same device) and the step's scalar ``row``."""
        declared = self.reductions
        k = self.Scalars(*row, *(0.0 for _ in declared.scalar_names))
        named = {name: sums[i] for i, name in enumerate(declared.names)}
        made = declared.scalars(xp, named, sizes, k)
        return [made[name] for name in declared.scalar_names]

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hypers}


def declare(*, name: str, rule: Callable, scalar_names: tuple[str, ...],
            flag_names: tuple[str, ...], slots: tuple[Slot, ...], class_name: str,
            keras_name: str | None = None, **fields) -> OptimizerSpec:
    """An :class:`OptimizerSpec` from its family's declarations. ``rule``'s module is the
    family (the CUDA kernel's name; ``kernel=`` names a pass's own, Muon's); its named-tuple
    types are made here, as attributes of that module (``<ClassName>Scalars``,
    ``<ClassName>Flags``), so they pickle."""
    module = sys.modules[rule.__module__]
    kernel = fields.pop("kernel", None) or rule.__module__.rpartition(".")[2]
    reductions = fields.get("reductions")
    row = (*scalar_names, *(reductions.scalar_names if reductions is not None else ()))
    scalars_type = namedtuple(f"{class_name}Scalars", row, module=rule.__module__)
    flags_type = namedtuple(f"{class_name}Flags", flag_names, module=rule.__module__)
    setattr(module, scalars_type.__name__, scalars_type)
    setattr(module, flags_type.__name__, flags_type)
    expected = ("p", "g", *{s.name: None for s in slots}, "k", "f")
    got = rule.__code__.co_varnames[:rule.__code__.co_argcount]
    if got != expected:
        raise TypeError(f"{rule.__qualname__} must take {expected}, takes {got}")
    if reductions is not None:
        got = reductions.rule.__code__.co_varnames[:reductions.rule.__code__.co_argcount]
        if got != expected:
            raise TypeError(f"{reductions.rule.__qualname__} must take {expected}, takes {got}")
        if not 0 < len(reductions.names) <= MAX_REDUCTIONS:
            raise TypeError(f"{name} declares {len(reductions.names)} reductions; a pass "
                            f"sums 1 to {MAX_REDUCTIONS}")
    factored = fields.get("factored")
    if factored is not None:
        kinds = {s.name: s.shape for s in slots}
        wanted = {factored.row: "row", factored.col: "col", factored.full: "full"}
        if any(kinds.get(n) != kind for n, kind in wanted.items()) or reductions is None:
            raise TypeError(f"{name}: a factored moment needs slots {wanted} (name: shape) "
                            "and reductions (its per-tensor step)")
    spec = OptimizerSpec(name=name, class_name=class_name, keras_name=keras_name or name,
                         kernel=kernel, flag_names=tuple(flag_names), slot_decls=tuple(slots),
                         scalar_names=tuple(scalar_names), rule=rule, Scalars=scalars_type,
                         Flags=flags_type, **fields)
    for convention in CONVENTIONS:  # once, here: the step reads them by these names
        given = set(spec.scalar_fn({**spec.defaults(), **(spec.running or {})}, 1,
                                   convention))
        if given != set(spec.scalar_names):
            raise TypeError(f"{name}'s scalars() must give exactly {spec.scalar_names} "
                            f"({convention} convention): missing "
                            f"{sorted(set(spec.scalar_names) - given)}, unknown "
                            f"{sorted(given - set(spec.scalar_names))}")
    return spec


__all__ = ["ADAM_LIKE", "BETA", "CONVENTIONS", "DECAY_SCALARS", "DECOUPLED", "DTYPES",
           "EPSILON", "Factored", "L2_FLAVORS", "LEARNING_RATE", "MAX_REDUCTIONS", "MOMENTUM",
           "Orthogonalized", "TORCH_ONLY", "WEIGHT_DECAY", "Hyper", "OptimizerSpec",
           "Reductions", "Slot",
           "StateScalar", "at_least", "boolean", "decay_scalars", "declare", "flavor",
           "in_range", "learning_rate", "optional"]
