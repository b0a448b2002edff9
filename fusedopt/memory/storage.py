"""The storage policy: which dtypes a param, its grad and its state may have, and how the
param is kept. Storage is not compute: the math runs in float32 for 16-bit and float32
params and in float64 for float64 params; values are widened on load and rounded to
nearest even once on store (kernels/storage.cuh, fusedopt/backends/cpu/storage.py).

- params: float32, float64, float16, bfloat16 (NumPy's bfloat16 is ``ml_dtypes.bfloat16``);
- grads: the param's dtype, or float32 for a 16-bit param kept with a master (fp32 grad
  accumulation goes with an fp32 master, as in Megatron's main grads and apex's O2);
- state (``state_dtype``): by default float32 for 16-bit params and the param's dtype
  otherwise; "float32" or "bfloat16" may be chosen for 16-bit and float32 params without a
  master, only "float64" for float64 params; a master keeps float32 state. "param" is
  torch.optim's choice where fusedopt can make it (fusedopt.torch's default): the param's
  own dtype, but float32 beside a master and for float16 params (there is no float16 state:
  float16's smallest value is 6e-8, so at beta2 = 0.999 Adam's (1 - beta2) g^2 rounds to
  zero for every |g| below 5e-3);
- ``master_weights``: False (the param is the weight), True (a float32 master in the
  optimizer's state, slot "master", updated in the same pass; the 16-bit param is written
  from it, rounded to nearest with ties away from zero), or "remainder" (bfloat16 params:
  an int16 slot "remainder" such that the param and it are the float32 master bit for bit;
  the same trajectory as True in 2 bytes instead of 4).
- ``kahan_summation=True`` (16-bit params, no master): a slot "compensation" in the param's
  dtype holds what the last store of the param rounded away; the rule sees param +
  compensation, the result is rounded once and what that lost goes back into the slot.
- ``stochastic_rounding=True`` (16-bit params without a master, or bfloat16 state): every
  16-bit store of the step rounds stochastically, with random bits keyed on (seed, step,
  param position, element index, array) (kernels/random_bits.cuh). Refused where nothing
  16-bit is stored by rounding (float32 and float64 params with float32/float64 state), and
  with masters: the float32 master is exact, so the 16-bit copy the forward pass reads stays
  the nearest value (and the remainder mode keeps writing the bits of the fp32-master mode).

- quantized state (``state_dtype="q8"`` or ``"q4"``, or ``"q8-dynamic"``/``"q4-power"``
  for the other map, fusedopt/memory/quant.py): every slot
  of the optimizer (but those declared ``float_state``, kept float32: schedule-free's z)
  kept as 8-bit (4-bit) codes in blocks with a float32 absmax each, for
  float32, bfloat16 and float16 params in every mode (with ``stochastic_rounding`` the codes
  are rounded stochastically too); a param of fewer than ``min_quantized_size`` elements
  (default 4096, as bitsandbytes) keeps float32 state. The CPU backend steps every such
  storage; the CUDA backend the ones fusedopt/backends/cuda/quantized.py lists. A door
  that steps one shard of a param counts the whole param's elements (``size`` of
  :func:`resolve`), so that sharding does not change the choice.

Each way of keeping and storing a param is a mode (the kernels' MODE): "plain", "master",
"remainder", "kahan", "stochastic".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quant import FLOAT_SLOT, FORMATS, MIN_QUANTIZED_SIZE, QUANTIZED, is_quantized

#: Param storage dtypes, and the CUDA type of each.
CUDA_TYPES = {"float32": "float", "float64": "double", "float16": "__half",
              "bfloat16": "__nv_bfloat16"}
PARAM_DTYPES = tuple(CUDA_TYPES)
#: The CUDA tag of each quantized format's code width (kernels/quantized.cuh): formats of
#: one width share their kernels, which take the map and its decision points as an argument.
CUDA_FORMATS = {8: "fusedopt::Q8", 4: "fusedopt::Q4"}
SIXTEEN_BIT = ("float16", "bfloat16")

#: Spellings of ``master_weights`` and the kernels' MODE of each (kernels/common.cuh).
MODES = {False: "plain", True: "master", "remainder": "remainder"}
MODE_IDS = {"plain": 0, "master": 1, "remainder": 2, "kahan": 3, "stochastic": 4}

#: The master slot of each mode: its name in the optimizer's state and its dtype.
MASTER_SLOTS = {"master": ("master", "float32"), "remainder": ("remainder", "int16")}


def numpy_dtype(name: str) -> np.dtype:
    """NumPy's dtype for a dtype name: "bfloat16" is ``ml_dtypes.bfloat16`` (NumPy does not
    know the name)."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def compute_dtype(param: str) -> str:
    return "float64" if param == "float64" else "float32"


# Why not every combination: each one is a compiled kernel per optimizer variant, and every
# kernel goes through the compile, machine-code, host and sanitizer gates. The two left out
# (float32 grads into a 16-bit param without a master; bfloat16 state beside a float32
# master) pair a precision choice with its opposite, so they are refused with the fix.

def grad_dtypes(param: str, mode: str = "plain") -> tuple[str, ...]:
    """The grad dtypes a param of dtype ``param`` kept in ``mode`` takes."""
    with_master = mode in ("master", "remainder")
    return (param, "float32") if param in SIXTEEN_BIT and with_master else (param,)


def state_dtypes(param: str, mode: str = "plain") -> tuple[str, ...]:
    """The state dtypes a param of dtype ``param`` kept in ``mode`` may be given (the
    default first)."""
    if param == "float64":
        return ("float64",)
    if mode == "stochastic" and param not in SIXTEEN_BIT:
        return ("bfloat16",)  # a float32 param: only its state is rounded stochastically
    return ("float32", "bfloat16") if mode in ("plain", "kahan", "stochastic") else ("float32",)


def default_state_dtype(param: str) -> str:
    return state_dtypes(param)[0]


def modes(param: str) -> tuple[str, ...]:
    """How a param of dtype ``param`` may be kept."""
    if param == "bfloat16":
        return ("plain", "master", "remainder", "kahan", "stochastic")
    if param == "float16":
        return ("plain", "master", "kahan", "stochastic")
    if param == "float32":
        return ("plain", "stochastic")
    return ("plain",)


@dataclass(frozen=True)
class Storage:
    """The dtypes of one launch: param, grad, state slots, and how the param is kept."""

    param: str
    grad: str
    state: str
    mode: str = "plain"

    @property
    def compute(self) -> str:
        return compute_dtype(self.param)

    @property
    def master(self) -> tuple[str, str] | None:
        """(slot name, dtype) of the slot after the optimizer's (the master, the remainder,
        the Kahan compensation in the param's dtype), None when there is none."""
        if self.mode == "kahan":
            return ("compensation", self.param)
        return MASTER_SLOTS.get(self.mode)

    @property
    def quantized(self) -> bool:
        """Whether the optimizer's slots are quantized ("q8", "q4")."""
        return is_quantized(self.state)

    def slot_dtype(self, signed) -> str:
        """The dtype of an optimizer slot whose map is ``signed`` (``spec.signed_slots``:
        None for a ``float_state`` slot): quantized state keeps such a slot in
        ``FLOAT_SLOT``, every other slot in the state dtype (or its format)."""
        return FLOAT_SLOT if self.quantized and signed is None else self.state

    def with_grad(self, grad: str) -> "Storage":
        return Storage(self.param, grad, self.state, self.mode)

    def template_args(self) -> str:
        """The CUDA template arguments before the variant flags: "P, G, S, MODE"."""
        state = (CUDA_FORMATS[FORMATS[self.state].bits] if self.quantized
                 else CUDA_TYPES[self.state])
        return ", ".join([CUDA_TYPES[self.param], CUDA_TYPES[self.grad], state,
                          str(MODE_IDS[self.mode])])

    def __str__(self) -> str:
        extra = "" if self.mode == "plain" else f", {self.mode}"
        return f"{self.param} params, {self.grad} grads, {self.state} state{extra}"


def all_storages() -> tuple[Storage, ...]:
    """Every storage the runtime can request: each param dtype with each of its modes and
    their grad and state dtypes (22 in all: 13, plus 4 Kahan and 5 stochastic)."""
    return tuple(Storage(p, g, s, m) for p in PARAM_DTYPES for m in modes(p)
                 for g in grad_dtypes(p, m) for s in state_dtypes(p, m))


def mode_of(master_weights, stochastic_rounding=False, kahan_summation=False) -> str:
    """The mode of ``master_weights`` (False, True or "remainder"), ``stochastic_rounding``
    and ``kahan_summation`` (bools); raises for other values and for combinations that
    mean nothing."""
    if not (isinstance(master_weights, (bool, str)) and master_weights in MODES):
        raise ValueError(f"master_weights must be False, True or 'remainder', got "
                         f"{master_weights!r}")
    for name, value in (("stochastic_rounding", stochastic_rounding),
                        ("kahan_summation", kahan_summation)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    mode = MODES[master_weights]
    if stochastic_rounding and kahan_summation:
        raise ValueError("stochastic_rounding=True and kahan_summation=True: choose one; "
                         "each alone keeps a 16-bit param from stalling (stochastic rounding "
                         "in no extra memory, Kahan summation deterministically in 2 bytes "
                         "per param)")
    extra = "stochastic_rounding" if stochastic_rounding else (
        "kahan_summation" if kahan_summation else None)
    if extra and mode != "plain":
        raise ValueError(f"{extra}=True with master_weights={master_weights!r}: the float32 "
                         "master already keeps every update (the 16-bit param is only its "
                         f"nearest copy); drop {extra}, or drop master_weights to train "
                         "in pure 16 bits")
    if stochastic_rounding:
        return "stochastic"
    return "kahan" if kahan_summation else mode


def mode_options(mode: str) -> dict:
    """The constructor arguments that select ``mode``: master_weights, stochastic_rounding,
    kahan_summation (the inverse of :func:`mode_of`)."""
    master = {"master": True, "remainder": "remainder"}.get(mode, False)
    return {"master_weights": master, "stochastic_rounding": mode == "stochastic",
            "kahan_summation": mode == "kahan"}


#: The ``state_dtype`` spellings besides None: dtype names, "param" (see the top) and the
#: quantized formats.
STATE_DTYPES = ("float32", "bfloat16", "float64", "param", *QUANTIZED)


def check_state_dtype(state_dtype) -> None:
    """``state_dtype`` is None, "param", a dtype name some param takes, "q8" or "q4"."""
    if state_dtype is not None and (not isinstance(state_dtype, str)
                                    or state_dtype not in STATE_DTYPES):
        raise ValueError(f"state_dtype must be None (float32 for 16-bit params, the param's "
                         f"dtype otherwise), 'float32', 'bfloat16', 'float64', 'param' (the "
                         f"param's dtype; float32 for float16), 'q8' or 'q4' (8- or 4-bit "
                         f"blockwise quantized: q8 with the power map, q4 with the dynamic "
                         f"one), 'q8-dynamic' or 'q4-power' (the other map), 'q8-bitsandbytes' "
                         f"(the dynamic map rounded as bitsandbytes rounds), got "
                         f"{state_dtype!r}")


def check_min_quantized_size(value) -> int:
    """``min_quantized_size`` as an int >= 0, or a ValueError saying what came in."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 0:
        raise ValueError(f"min_quantized_size must be an int >= 0 (params with fewer "
                         f"elements keep float32 state; default {MIN_QUANTIZED_SIZE}), got "
                         f"{value!r}")
    return int(value)


def _policy_state(param: str, state_dtype, mode: str) -> str:
    """The state dtype ``state_dtype`` asks of a ``param`` param kept in ``mode``."""
    if state_dtype is None:
        return default_state_dtype(param)
    if state_dtype == "param":
        allowed = state_dtypes(param, mode)
        return param if param in allowed else allowed[0]
    return state_dtype


def resolve(where: str, param: str, state_dtype, mode: str, size: int | None = None,
            min_quantized_size: int = MIN_QUANTIZED_SIZE) -> tuple[str, str]:
    """(state dtype, mode) for a param of dtype ``param`` (of ``size`` elements, where the
    state may be quantized), or a ValueError naming ``where`` (e.g. "param 3") and the
    fix."""
    if param not in PARAM_DTYPES:
        raise TypeError(f"{where} has dtype {param}; fusedopt steps "
                        f"{', '.join(PARAM_DTYPES)} params: convert it (e.g. "
                        ".astype(np.float32))")
    if is_quantized(state_dtype):
        return _resolve_quantized(where, param, state_dtype, mode, size, min_quantized_size)
    if mode in ("kahan", "stochastic") and (
            mode not in modes(param) or state_dtype not in state_dtypes(param, mode) and
            param not in SIXTEEN_BIT):
        flag = "kahan_summation" if mode == "kahan" else "stochastic_rounding"
        if mode == "kahan":
            why = ("compensates the rounding of a 16-bit param: keep this param in "
                   "bfloat16/float16, or drop kahan_summation")
        else:
            why = ("rounds 16-bit stores: keep this param in bfloat16/float16, pass "
                   "state_dtype='bfloat16' (float32 params) to round the state "
                   "stochastically, or drop stochastic_rounding")
        stored = f" with {state_dtype or default_state_dtype(param)} state"
        raise ValueError(f"{where} is {param}{stored}; {flag}=True means nothing for it (it "
                         f"{why})")
    if mode not in modes(param):
        if param not in SIXTEEN_BIT:
            fix = ("master weights are for 16-bit params: drop master_weights, or keep this "
                   "param in float16/bfloat16")
        else:
            fix = ("remainder masters need bfloat16 params (a float16 param is not the high "
                   "half of a float32): use master_weights=True for float16")
        raise ValueError(f"{where} is {param}; master_weights={spelling(mode)!r} is not "
                         f"possible: {fix}")
    state = _policy_state(param, state_dtype, mode)
    if state not in state_dtypes(param, mode):
        kept = "" if mode in ("plain", "kahan", "stochastic") else \
            f" kept with master_weights={spelling(mode)!r}"
        fix = ("a float32 master keeps float32 state: drop state_dtype (or master_weights)"
               if mode != "plain" and state_dtype in state_dtypes(param) else
               "pass state_dtype=None for the default")
        raise ValueError(f"{where} is {param}{kept}, whose state can be "
                         f"{' or '.join(state_dtypes(param, mode))}, not "
                         f"state_dtype={state!r}; {fix}")
    return state, mode


def _resolve_quantized(where, param, state_dtype, mode, size, min_quantized_size):
    """(state, mode) of ``state_dtype`` "q8"/"q4": the format itself, or float32 state for
    a param below ``min_quantized_size`` elements (plain, for a float32 param whose only
    stochastic store would have been its codes)."""
    if param == "float64":
        raise ValueError(f"{where} is float64; state_dtype={state_dtype!r} quantizes the "
                         "state of float32, bfloat16 and float16 params: pass "
                         "state_dtype=None for float64 state, or convert the param")
    if mode not in modes(param):
        return resolve(where, param, None, mode)  # its own error: the mode, not the state
    if size is not None and size < min_quantized_size:
        if mode == "stochastic" and param not in SIXTEEN_BIT:
            return "float32", "plain"
        return "float32", mode
    return state_dtype, mode


def check_grad(where: str, param: str, grad: str, mode: str = "plain") -> None:
    """A TypeError naming ``where`` when a grad of dtype ``grad`` cannot update ``param``."""
    if grad in grad_dtypes(param, mode):
        return
    allowed = " or ".join(grad_dtypes(param, mode))
    hint = ""
    if grad in grad_dtypes(param, "master"):
        hint = (" (float32 grads go with an fp32 master: pass master_weights=True, or "
                "'remainder' for bfloat16)")
    raise TypeError(f"{where}: grad dtype {grad} cannot update a {param} param here (it "
                    f"takes {allowed} grads){hint}; cast the grad with .astype({param})")


def describe(mode: str) -> str:
    """The arguments that select ``mode``, as a user writes them: "master_weights=False"
    for plain storage, else the one argument that is not its default."""
    options = mode_options(mode)
    chosen = [f"{k}={v!r}" for k, v in options.items() if v is not False]
    return ", ".join(chosen) or "master_weights=False"


def spelling(mode: str):
    """The ``master_weights`` value of a mode name (False for the pure 16-bit modes,
    stochastic rounding and Kahan summation, which keep no master)."""
    return next((k for k, v in MODES.items() if v == mode), False)
