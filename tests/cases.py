"""Shared test data: awkward sizes, hyperparameter cases per optimizer, random problems."""

from __future__ import annotations

import numpy as np

#: Where tail and alignment bugs live: 1, below/above a vector, odd, large odd, empty, 2-D.
AWKWARD_SHAPES = [(1,), (3,), (4097,), (278011,), (0,), (37, 53)]

#: Hyperparameter cases per registered optimizer and convention. Chosen so that a formula
#: slip shows: learning rates and epsilons large enough to matter at float32.
CASES = {
    "adam": {
        "keras": [
            dict(learning_rate=0.01),
            dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3),
            dict(learning_rate=0.02, amsgrad=True, epsilon=1e-4),
            dict(learning_rate=0.03, weight_decay=0.1, epsilon=1e-3),
            dict(learning_rate=0.03, weight_decay=0.05, amsgrad=True),
        ],
        "torch": [
            dict(learning_rate=0.01, epsilon=1e-8),
            dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3),
            dict(learning_rate=0.02, amsgrad=True, epsilon=1e-4),
            dict(learning_rate=0.03, weight_decay=0.1, epsilon=1e-3),
            dict(learning_rate=0.03, weight_decay=0.05, amsgrad=True, epsilon=1e-3),
        ],
    },
    "adamw": {
        "keras": [
            dict(learning_rate=0.01),
            dict(learning_rate=0.05, weight_decay=0.2, epsilon=1e-3),
            dict(learning_rate=0.02, weight_decay=0.1, amsgrad=True, epsilon=1e-4),
        ],
        "torch": [
            dict(learning_rate=0.01, weight_decay=0.01, epsilon=1e-8),
            dict(learning_rate=0.05, weight_decay=0.2, epsilon=1e-3),
            dict(learning_rate=0.02, weight_decay=0.1, amsgrad=True, epsilon=1e-4),
        ],
    },
}

# Adamax, Nadam, Lion. Adamax: with a short beta_2 and an epsilon as large as the grads,
# eps inside the max (torch, decaying with u) and eps beside u (Keras) part by far more
# than the tolerance. Nadam: a large momentum_decay makes torch's
# schedule move within 20 steps. Lion: see test_family2.py for why only its float64 runs
# and its sign-safe float32 runs compare elementwise.
CASES.update({
    "adamax": {
        "keras": [
            dict(learning_rate=0.01),
            dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3),
            dict(learning_rate=0.03, weight_decay=0.1, epsilon=1e-3),
            dict(learning_rate=0.05, beta_2=0.9, epsilon=0.1),
        ],
        "torch": [
            dict(learning_rate=0.01, epsilon=1e-8),
            dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3),
            dict(learning_rate=0.03, weight_decay=0.1, epsilon=1e-3),
            dict(learning_rate=0.05, beta_2=0.9, epsilon=0.1),
        ],
    },
    "nadam": {
        "keras": [
            dict(learning_rate=0.01),
            dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3),
            dict(learning_rate=0.03, weight_decay=0.1, epsilon=1e-4),
        ],
        "torch": [
            dict(learning_rate=0.01, epsilon=1e-8),
            dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3, momentum_decay=0.05),
            dict(learning_rate=0.03, weight_decay=0.1, epsilon=1e-4),
            dict(learning_rate=0.02, weight_decay=0.2, decoupled_weight_decay=True,
                 epsilon=1e-3),
        ],
    },
    "lion": {
        "keras": [
            dict(learning_rate=0.01),
            dict(learning_rate=0.02, beta_1=0.5, beta_2=0.9),
            dict(learning_rate=0.01, weight_decay=0.1),
        ],
        "torch": [
            dict(learning_rate=0.01, weight_decay=0.1),
            dict(learning_rate=0.02, beta_1=0.95, beta_2=0.98),
        ],
    },
})


#: Optimizers whose float32 result can differ from another implementation by a whole step
#: where the update direction rounds across zero (Lion's sign(c) when |c| is a few ulps):
#: the generic float32 elementwise tests leave them out; tests/test_family2.py compares
#: them on elements whose direction stays clear of zero.
SIGN_SENSITIVE = frozenset({"lion"})

#: Optimizers that step 2-D params only, orthogonalizing each update (Muon): the 1-D awkward
#: sizes do not apply to them, and torch's convention runs Newton-Schulz in bfloat16, outside
#: the float32 tolerance of the elementwise comparisons; tests/test_muon.py compares that
#: convention with the oracle under its own stated bound.
MATRIX_ONLY = frozenset({"muon"})


def assert_refused(name: str, dtype: str = "float32", shape=(4, 8)) -> None:
    """Where a registry-wide test reaches params that an optimizer does not step (Adafactor's
    16-bit ones, Muon's that are not 2-D), the refusal itself: an error naming what it
    takes, and the param unchanged."""
    import fusedopt
    import pytest
    import reference
    from fusedopt.algorithms.registry import REGISTRY

    dt = reference.as_dtype(dtype)
    p = np.ones(shape, dt)
    before = p.copy()
    with pytest.raises((TypeError, ValueError), match=r"supports .* params|2-D params only"):
        getattr(fusedopt, REGISTRY[name].class_name)().apply_gradients(
            [(np.ones(shape, dt), p)])
    assert p.tobytes() == before.tobytes()


def cases(name: str, convention: str) -> list[dict]:
    """The hand-picked cases of ``name``, or for an optimizer without any, one case per
    on/off combination of its hyperparameters that validates (tests/variants.py)."""
    if name in CASES:
        return CASES[name].get(convention, [])
    from fusedopt.algorithms.registry import REGISTRY
    from variants import variants
    return [dict(hp, learning_rate=0.01) for hp, conv, _ in variants(REGISTRY[name])
            if conv == convention]


def problem(shape, steps, dtype=np.float32, seed=0):
    """A param drawn around +-3 and ``steps`` gradients of mixed scale."""
    rng = np.random.default_rng(seed)
    p = (rng.standard_normal(shape) * 3).astype(dtype)
    grads = [(rng.standard_normal(shape) * rng.choice([0.01, 1.0, 10.0])).astype(dtype)
             for _ in range(steps)]
    return p, grads



# --- SGD, RMSprop, Adagrad, Adadelta ----------------------------------------------------------
# One case per variant (momentum, Nesterov, centered; torch's dampening and lr_decay), weight
# decay on in every other one. Epsilons of 1e-3 expose epsilon inside vs outside the root;
# SGD's learning rate keeps |theta| near its start, where float32's ulp matches the atol.

def _decay_every_other(variants, weight_decay=0.1):
    return [{**v, "weight_decay": weight_decay} if i % 2 else v for i, v in enumerate(variants)]


_SGD = [dict(learning_rate=0.005, momentum=0.9), dict(learning_rate=0.02),
        dict(learning_rate=0.005, momentum=0.9, nesterov=True),
        dict(learning_rate=0.005, momentum=0.8, nesterov=True)]
_RMSPROP = [dict(learning_rate=0.01, rho=0.8, momentum=m, centered=c, epsilon=1e-3)
            for m in (0.0, 0.9) for c in (False, True)]
_ADAGRAD = [dict(learning_rate=0.1, initial_accumulator_value=0.0, epsilon=1e-3),
            dict(learning_rate=0.1, initial_accumulator_value=0.5, epsilon=1e-3)]
_ADADELTA = [dict(learning_rate=1.0, rho=0.8, epsilon=1e-3),
             dict(learning_rate=0.5, rho=0.95, epsilon=1e-6)]

CASES.update({
    "sgd": {
        "keras": _decay_every_other(_SGD),
        "torch": _decay_every_other(_SGD + [dict(learning_rate=0.005, momentum=0.9,
                                                 dampening=0.3)]),
    },
    "rmsprop": {"keras": _decay_every_other(_RMSPROP),
                "torch": _decay_every_other(_RMSPROP[::-1])},
    "adagrad": {
        "keras": _decay_every_other(_ADAGRAD),
        "torch": _decay_every_other(_ADAGRAD + [dict(learning_rate=0.1, lr_decay=0.05,
                                                     epsilon=1e-3)]),
    },
    "adadelta": {"keras": _decay_every_other(_ADADELTA),
                 "torch": _decay_every_other(_ADADELTA)},
})


# --- schedule-free: warm-up, the polynomial weighting r, the lr weighting, weight decay -------
_SF = [dict(learning_rate=0.02), dict(learning_rate=0.05, warmup_steps=4, weight_decay=0.1),
       dict(learning_rate=0.03, warmup_steps=3, r=1.0, weight_lr_power=1.0)]
CASES.update({
    "schedulefreeadamw": {
        "keras": [dict(learning_rate=0.02), dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99,
                                                 epsilon=1e-3, warmup_steps=4),
                  dict(learning_rate=0.03, weight_decay=0.1)],
        "torch": [*_SF, dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-3,
                             weight_decay=0.05)],
    },
    "schedulefreesgd": {
        "keras": [dict(learning_rate=0.01), dict(learning_rate=0.02, momentum=0.8,
                                                 warmup_steps=4, weight_decay=0.1)],
        "torch": [dict(learning_rate=0.01), dict(learning_rate=0.02, warmup_steps=4,
                                                 weight_decay=0.1),
                  dict(learning_rate=0.01, momentum=0.5, r=1.0, weight_lr_power=1.0)],
    },
    # Ten evals in a row, z up to 10 and the result near 0: x = (y - (1 - b1) z) / b1
    # cancels, so a beta_1 near 1 keeps the float32 error within the table's atol.
    "schedulefreeswitch": {
        conv: [dict(beta_1=0.98, to_eval=True), dict(beta_1=0.8, to_eval=False, saved=False),
               dict(to_eval=False, saved=True)] for conv in ("keras", "torch")},
})

# --- Adafactor: factored second moments ----------------------------------------------------------
# The first case keeps the peer's defaults but the learning rate; the second moves every
# hyperparameter, with an update clip that binds (clip_threshold below 1 in Keras).
CASES["adafactor"] = {
    "keras": [dict(learning_rate=0.01),
              dict(learning_rate=0.05, beta_2_decay=-0.5, epsilon_1=1e-20, epsilon_2=1e-2,
                   clip_threshold=0.9, weight_decay=0.1)],
    "torch": [dict(learning_rate=0.01, epsilon_1=None),
              dict(learning_rate=0.05, beta_2_decay=-0.6, epsilon_1=1e-6, epsilon_2=1e-2,
                   clip_threshold=1.5, weight_decay=0.1)],
}

# --- LAMB and StableAdamW: per-tensor norms ----------------------------------------------------
# Learning rates large enough that the trust ratio and the RMS clip move the params; a short
# beta_2 (StableAdamW) makes RMS(g^2 / v) exceed 1 on the problems' mixed-scale grads.
CASES.update({
    "lamb": {
        "keras": [dict(learning_rate=0.01),
                  dict(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-4,
                       weight_decay=0.1)],
        "torch": [dict(learning_rate=0.01, epsilon=1e-6, weight_decay=0.01),
                  dict(learning_rate=0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-3)],
    },
    "stableadamw": {
        "keras": [dict(learning_rate=0.01),
                  dict(learning_rate=0.02, beta_1=0.8, beta_2=0.5, epsilon=1e-3,
                       weight_decay=0.1)],
        "torch": [dict(learning_rate=0.01),
                  dict(learning_rate=0.02, beta_1=0.8, beta_2=0.5, epsilon=1e-3,
                       weight_decay=0.1),
                  dict(learning_rate=0.02, beta_2=0.6, weight_decay=0.05, decouple_lr=True,
                       max_lr=0.05)],
    },
})

# --- Adan: four slots; epsilon 1e-3 exposes its place, a short beta_2 weighs the grad difference
CASES.update({
    "adan": {
        "keras": [dict(learning_rate=0.01),
                  dict(learning_rate=0.02, beta_1=0.9, beta_2=0.7, beta_3=0.95, epsilon=1e-3,
                       weight_decay=0.1)],
        "torch": [dict(learning_rate=0.01, weight_decay=0.05),
                  dict(learning_rate=0.02, beta_1=0.9, beta_2=0.7, beta_3=0.95, epsilon=1e-3),
                  dict(learning_rate=0.02, weight_decay=0.1, adam_wd=True),
                  dict(learning_rate=0.01, weight_decay=0.05, decouple_lr=True, max_lr=0.05)],
    },
})

# --- Muon: 2-D params; the Keras convention against the oracle on the 2-D awkward shape ----------
CASES.update({
    "muon": {
        "keras": [dict(learning_rate=0.02),
                  dict(learning_rate=0.01, weight_decay=0.1, momentum=0.8, nesterov=False,
                       ns_steps=3, rms_rate=None)],
        "torch": [dict(learning_rate=0.02, weight_decay=0.1),
                  dict(learning_rate=0.01, nesterov=False, adjust_lr_fn="match_rms_adamw")],
    },
})

