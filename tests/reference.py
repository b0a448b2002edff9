"""The float64 oracle: every optimizer written naively from its paper and its peers' docs.

Each function takes param ``p`` and grad ``g`` (float64 arrays), the state dict (created
empty on the first step and filled here), the 1-based step ``t``, the hyperparameters
``hp`` (Keras names) and the convention, and returns the new param. The reference is
itself checked against real Keras and PyTorch runs (tests/test_conformance.py).
"""

from __future__ import annotations

import numpy as np
from reference_factored import adafactor  # noqa: F401 - Adafactor's, in a file of its own


def _zeros(state, key, like, value=0.0):
    if key not in state:
        state[key] = np.full_like(like, value, dtype=np.float64)
    return state[key]


def _weight_decay(p, g, hp, convention, decoupled_in_torch):
    """Keras: decoupled theta -= theta*wd*lr; torch: L2 unless decoupled (AdamW). No term at
    all without weight decay, as in Keras and torch (an inf theta times 0 is NaN)."""
    wd = hp.get("weight_decay") or 0.0
    lr = hp["learning_rate"]
    if wd == 0:
        return p, g
    if convention == "keras":
        return p - p * wd * lr, g
    if decoupled_in_torch:
        return p * (1 - lr * wd), g
    return p, g + wd * p


def _toward(average, value, weight):
    """A moving average, ``average + (value - average) * weight``: Keras' ``m += (g - m) *
    (1 - b1)`` and torch's ``lerp``, equal to ``b1 m + (1 - b1) g``. Written the way the
    peers compute it because the order decides the rounding: tests/error_bounds.py bounds the
    error of these very formulas in float32."""
    return average + (value - average) * weight


def _second_moment(v, g, b2, convention):
    """Adam's v: Keras ``v += (g*g - v)(1 - b2)``; torch ``b2 v + (1 - b2) (g*g)``."""
    if convention == "keras":
        return _toward(v, g * g, 1 - b2)
    return b2 * v + (1 - b2) * (g * g)


def adam(p, g, state, t, hp, convention, decoupled_in_torch=False):
    b1, b2, eps, lr = hp["beta_1"], hp["beta_2"], hp["epsilon"], hp["learning_rate"]
    decoupled = decoupled_in_torch or hp.get("decoupled_weight_decay", False)
    p, g = _weight_decay(p, g, hp, convention, decoupled)
    m = state["m"] = _toward(_zeros(state, "m", p), g, 1 - b1)
    v = state["v"] = _second_moment(_zeros(state, "v", p), g, b2, convention)
    if hp.get("amsgrad"):
        v = state["vhat"] = np.maximum(_zeros(state, "vhat", p), v)
    if convention == "keras":
        # Keras folds the bias corrections into the step and leaves epsilon outside them.
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        return p - alpha * m / (np.sqrt(v) + eps)
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def adamw(p, g, state, t, hp, convention):
    return adam(p, g, state, t, hp, convention, decoupled_in_torch=True)


def step(name, p, g, state, t, hp, convention):
    """Dispatch to the reference of registered optimizer ``name``."""
    return globals()[name](np.asarray(p, np.float64), np.asarray(g, np.float64), state, t, hp,
                           convention)


# --- SGD, RMSprop, Adagrad, Adadelta (torch's weight decay is L2 in all four) ----------------

def sgd(p, g, state, t, hp, convention):
    lr, mu = hp["learning_rate"], hp["momentum"]
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=False)
    if mu == 0:
        return p - lr * g
    if convention == "keras":
        # Keras keeps the velocity with the learning rate inside it.
        velocity = state["momentum"] = mu * _zeros(state, "momentum", p) - lr * g
        if hp.get("nesterov"):
            return p + mu * velocity - lr * g
        return p + velocity
    # torch: the buffer is a copy of g the first time, then damped.
    if "momentum" not in state:
        buf = state["momentum"] = g.copy()
    else:
        buf = state["momentum"] = mu * state["momentum"] + (1 - hp.get("dampening", 0.0)) * g
    direction = g + mu * buf if hp.get("nesterov") else buf
    return p - lr * direction


def rmsprop(p, g, state, t, hp, convention):
    lr, rho, mu, eps = hp["learning_rate"], hp["rho"], hp["momentum"], hp["epsilon"]
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=False)
    v = state["velocity"] = rho * _zeros(state, "velocity", p) + (1 - rho) * g**2
    mean_square = v
    if hp.get("centered"):
        gbar = _zeros(state, "average_gradient", p)
        gbar = state["average_gradient"] = (rho * gbar + (1 - rho) * g if convention == "keras"
                                            else _toward(gbar, g, 1 - rho))  # torch: lerp
        mean_square = v - gbar**2
    if convention == "keras":
        increment = lr * g / np.sqrt(mean_square + eps)  # epsilon inside the root
        if mu > 0:
            increment = state["momentum"] = mu * _zeros(state, "momentum", p) + increment
        return p - increment
    direction = g / (np.sqrt(mean_square) + eps)  # epsilon outside the root
    if mu > 0:
        # torch's buffer leaves lr out; it multiplies the buffer by lr afterwards.
        direction = state["momentum"] = mu * _zeros(state, "momentum", p) + direction
    return p - lr * direction


def adagrad(p, g, state, t, hp, convention):
    lr, eps = hp["learning_rate"], hp["epsilon"]
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=False)
    acc = _zeros(state, "accumulator", p, hp["initial_accumulator_value"])
    acc = state["accumulator"] = acc + g**2
    if convention == "keras":
        return p - lr * g / np.sqrt(acc + eps)
    lr = lr / (1 + (t - 1) * hp.get("lr_decay", 0.0))
    return p - lr * g / (np.sqrt(acc) + eps)


def adadelta(p, g, state, t, hp, convention):
    lr, rho, eps = hp["learning_rate"], hp["rho"], hp["epsilon"]
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=False)
    eg = state["accumulated_grad"] = (rho * _zeros(state, "accumulated_grad", p)
                                      + (1 - rho) * g**2)
    ed = _zeros(state, "accumulated_delta_var", p)
    delta = np.sqrt(ed + eps) / np.sqrt(eg + eps) * g
    state["accumulated_delta_var"] = rho * ed + (1 - rho) * delta**2
    return p - lr * delta


# --- Adamax, Nadam, Lion ----------------------------------------------------------------------

def adamax(p, g, state, t, hp, convention):
    b1, b2, eps, lr = hp["beta_1"], hp["beta_2"], hp["epsilon"], hp["learning_rate"]
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=False)
    m = state["m"] = _toward(_zeros(state, "m", p), g, 1 - b1)
    if convention == "keras":
        u = state["u"] = np.maximum(b2 * _zeros(state, "u", p), np.abs(g))
        return p - lr * m / ((1 - b1**t) * (u + eps))
    # torch: epsilon inside the max, none in the denominator.
    u = state["u"] = np.maximum(b2 * _zeros(state, "u", p), np.abs(g) + eps)
    return p - (lr / (1 - b1**t)) * m / u


def nadam(p, g, state, t, hp, convention):
    """Dozat's Nadam; the momentum product is carried from step to step, as the libraries do."""
    b1, b2, eps, lr = hp["beta_1"], hp["beta_2"], hp["epsilon"], hp["learning_rate"]
    psi = 1.0 if convention == "keras" else hp["momentum_decay"]
    p, g = _weight_decay(p, g, hp, convention, hp.get("decoupled_weight_decay", False))
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    product = state.get("product", 1.0) * mu
    if convention == "torch":  # torch.optim.NAdam keeps mu_product as a float32 tensor
        product = float(np.float32(state.get("product", 1.0)) * np.float32(mu))
    state["product"] = product
    m = state["m"] = _toward(_zeros(state, "m", p), g, 1 - b1)
    v = state["v"] = _second_moment(_zeros(state, "v", p), g, b2, convention)
    m_hat = mu_next * m / (1 - product * mu_next) + (1 - mu) * g / (1 - product)
    v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def lion(p, g, state, t, hp, convention):
    """Chen et al. 2023, Algorithm 2; both conventions decay the weights decoupled."""
    b1, b2, lr = hp["beta_1"], hp["beta_2"], hp["learning_rate"]
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=True)
    m = _zeros(state, "m", p)
    p = p - lr * np.sign(b1 * m + (1 - b1) * g)
    state["m"] = b2 * m + (1 - b2) * g
    return p


def radam(p, g, state, t, hp, convention):
    """Liu et al. 2020, Algorithm 2, as torch.optim.RAdam documents it: the SGD-with-momentum
    step until the approximated SMA length rho_t passes 5, then Adam's step times the
    rectification r_t."""
    b1, b2, eps, lr = hp["beta_1"], hp["beta_2"], hp["epsilon"], hp["learning_rate"]
    p, g = _weight_decay(p, g, hp, convention, hp.get("decoupled_weight_decay", False))
    m = state["m"] = _toward(_zeros(state, "m", p), g, 1 - b1)
    v = state["v"] = b2 * _zeros(state, "v", p) + (1 - b2) * (g * g)
    m_hat = m / (1 - b1**t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
    if rho_t <= 5:
        return p - lr * m_hat
    adaptive = np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
    r = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return p - lr * m_hat * adaptive * r

# --- schedule-free (Defazio et al. 2024; the schedulefree package's and Keras' docs) ---------

def _schedule_free(p, g, state, t, hp, convention, b1, normalize, x_from_new_z=False):
    """One schedule-free step in the paper's three sequences: z the SGD/Adam iterates, x
    their weighted average, the param y = (1 - b1) z + b1 x. x is not kept: it is
    recovered from y and z. Torch (the schedulefree package): c_t = w_t / sum w with
    w_t = t^r lr_max^weight_lr_power, lr_max the largest warmed-up lr so far, weight decay
    wd * y added to the normalized grad. Keras: c_t = 1/t, y -= y * wd * lr first.
    ``x_from_new_z``: x recovered from y and the new z (what Keras 3.15's AdamW computes on
    its torch backend, where its "momentum_old" is the variable's tensor, updated in place
    before it is read)."""
    lr, warmup, wd = hp["learning_rate"], hp["warmup_steps"], hp.get("weight_decay") or 0.0
    lr_t = lr * min(1.0, t / warmup) if warmup > 0 else lr
    if "z" not in state:  # z starts at the param, as it was before the first step
        state["z"] = p
    if convention == "keras":
        if wd:
            p = p - p * wd * lr
        c = 1.0 / t
    else:
        state["lr_max"] = max(state.get("lr_max", -1.0), lr_t)
        w = t ** hp["r"] * state["lr_max"] ** hp["weight_lr_power"]
        state["weight_sum"] = state.get("weight_sum", 0.0) + w
        c = w / state["weight_sum"] if state["weight_sum"] else 0.0
    z = state["z"]
    gn = normalize(g)
    if convention == "torch" and wd:
        gn = gn + wd * p
    z_new = z - lr_t * gn
    x = (p - (1 - b1) * (z_new if x_from_new_z else z)) / b1
    z = state["z"] = z_new
    x = (1 - c) * x + c * z
    return (1 - b1) * z + b1 * x


def schedulefreeadamw(p, g, state, t, hp, convention):
    b2, eps = hp["beta_2"], hp["epsilon"]

    def normalize(g):
        v = state["v"] = b2 * _zeros(state, "v", p) + (1 - b2) * g * g
        return g / (np.sqrt(v / (1 - b2**t)) + eps)
    return _schedule_free(p, g, state, t, hp, convention, hp["beta_1"], normalize,
                          x_from_new_z=convention == "keras")


def schedulefreesgd(p, g, state, t, hp, convention):
    return _schedule_free(p, g, state, t, hp, convention, hp["momentum"], lambda g: g)


def schedulefreeswitch(p, g, state, t, hp, convention):
    """The train/eval move with z given as the grad: eval keeps y and gives
    x = (y - (1 - b1) z) / b1; train gives the kept y (zero if none was kept: a fresh slot)
    or, without one, y = (1 - b1) z + b1 x."""
    b1, z = hp["beta_1"], g
    if hp["to_eval"]:
        state["y"] = p
        return (p - (1 - b1) * z) / b1
    if hp["saved"]:
        return _zeros(state, "y", p)
    return (1 - b1) * z + b1 * p


# --- per-tensor norms: LAMB, StableAdamW -------------------------------------------------------

def lamb(p, g, state, t, hp, convention):
    """You et al. 2020, Algorithm 2 (LAMB), with phi the identity: Adam's bias-corrected
    update u, then theta -= lr * ||theta|| / ||u|| * u, the ratio 1 where a norm is 0.
    Keras' Lamb decays theta first as all Keras optimizers do (its u has no decay term) and
    takes 1 - beta^t in float32 (of its float32 variables); the paper (torch convention)
    adds weight_decay * theta to u, inside the ratio."""
    b1, b2, eps, lr = hp["beta_1"], hp["beta_2"], hp["epsilon"], hp["learning_rate"]
    wd = hp.get("weight_decay") or 0.0
    if convention == "keras" and wd:
        p = p - p * wd * lr
    m = state["m"] = _toward(_zeros(state, "m", p), g, 1 - b1)
    v = state["v"] = _second_moment(_zeros(state, "v", p), g, b2, convention)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    if convention == "keras":  # keras/src/optimizers/lamb.py: 1 - beta**t in the float32
        bc1, bc2 = (float(np.float32(1) - np.float32(b) ** np.float32(t)) for b in (b1, b2))
    u = (m / bc1) / (np.sqrt(v / bc2) + eps)
    if convention == "torch":
        u = u + wd * p
    w_norm, u_norm = np.sqrt(np.sum(p * p)), np.sqrt(np.sum(u * u))
    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    return p - lr * ratio * u


def stableadamw(p, g, state, t, hp, convention):
    """Wortsman et al. 2023 (Algorithm 2, StableAdamW) as optimi documents it: Adam with
    the betas debiased into b_hat = b (1 - b^(t-1)) / (1 - b^t) (no separate bias
    correction), and the step's lr divided by max(1, RMS) with RMS the root of the mean of
    g^2 / max(v, eps^2) over the tensor. Decay: theta *= 1 - lr_t * wd (optimi), or Keras'
    theta -= theta * wd * lr before the step."""
    b1, b2, eps, lr = hp["beta_1"], hp["beta_2"], hp["epsilon"], hp["learning_rate"]
    wd = hp.get("weight_decay") or 0.0
    b1_hat = b1 * (1 - b1 ** (t - 1)) / (1 - b1**t)
    b2_hat = b2 * (1 - b2 ** (t - 1)) / (1 - b2**t)
    m = state["m"] = _toward(_zeros(state, "m", p), g, 1 - b1_hat)
    v = state["v"] = b2_hat * _zeros(state, "v", p) + (1 - b2_hat) * g * g
    rms = np.sqrt(np.mean(g * g / np.maximum(v, eps * eps))) if p.size else 0.0
    lr_t = lr / max(1.0, rms)
    if convention == "keras":
        if wd:
            p = p - p * wd * lr
    elif hp.get("decouple_lr"):
        max_lr = hp.get("max_lr") or lr
        p = p * (1 - lr_t / max_lr * wd)
    else:
        p = p * (1 - lr_t * wd)
    return p - lr_t * m / (np.sqrt(v) + eps)

# --- gradient clipping ------------------------------------------------------------------------

def clip(grads, clipnorm=None, global_clipnorm=None, clipvalue=None):
    """Keras' clipping of one call's grads, in float64: clipnorm per tensor, else
    global_clipnorm over all of them, else clipvalue elementwise."""
    grads = [np.asarray(g, np.float64) for g in grads]
    if clipnorm:
        return [g * clipnorm / max(np.sqrt(np.sum(g * g)), clipnorm) for g in grads]
    if global_clipnorm:
        norm = np.sqrt(sum(np.sum(g * g) for g in grads))
        return [g * global_clipnorm / max(norm, global_clipnorm) for g in grads]
    if clipvalue:
        return [np.clip(g, -clipvalue, clipvalue) for g in grads]
    return grads


# --- storage: 16-bit params and state ---------------------------------------------------------

def as_dtype(name):
    """NumPy's dtype for a storage dtype name (bfloat16 is ml_dtypes')."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def rounded(x, dtype):
    """``x`` (float64) stored as ``dtype`` once, to nearest even, and read back exactly
    (NumPy and ml_dtypes round float64 to float16/bfloat16 directly, not through float32)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, np.float64).astype(as_dtype(dtype)).astype(np.float64)


def stored_step(name, p, g, state, t, hp, convention, param_dtype, state_dtype,
                exact=None):
    """One step of the float64 reference with the storage roundings of a fused step: the
    param rounded once to ``param_dtype`` and every state array once to ``state_dtype``,
    at the end of the step; a state that starts at a nonzero value starts at that value
    rounded (Adagrad's accumulator). ``state`` is updated in place; returns the new param.
    ``exact``, a dict, receives the values before their rounding ("param" and the slots).
    """
    if t == 1 and "initial_accumulator_value" in hp:
        hp = dict(hp, initial_accumulator_value=float(
            rounded(hp["initial_accumulator_value"], state_dtype)))
    new = step(name, p, g, state, t, hp, convention)
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            if exact is not None:
                exact[key] = value
            state[key] = rounded(value, state_dtype)
    if exact is not None:
        exact["param"] = new
    return rounded(new, param_dtype)


def nearest_away(x, dtype):
    """``x`` (float64 or float32) rounded to the 16-bit ``dtype`` to nearest with ties away
    from zero (a master weight's 16-bit copy), read back as float64. From nearest even:
    where ``x`` lies exactly halfway to the neighbour farther from zero, that neighbour."""
    dt = as_dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(x, np.float64)
        even = x.astype(dt)
        back = even.astype(np.float64)
        farther = (even.view(np.uint16) + np.uint16(1)).view(dt).astype(np.float64)
        tie = (np.isfinite(x) & np.isfinite(back) & (np.abs(x) > np.abs(back))
               & (np.abs(x) - np.abs(back) == np.abs(farther) - np.abs(x)))
    return np.where(tie, farther, back)


def rprop(p, g, state, t, hp, convention):
    """Riedmiller & Braun 1993 as torch.optim.Rprop documents it: a step size per element,
    grown by eta_plus while the grad keeps its sign and shrunk by eta_minus when it flips
    (that step then moves nothing and the flipped grad is forgotten), kept in
    [min_step_size, max_step_size]; it starts at the learning rate. torch has no weight
    decay; the Keras convention's is Keras' decoupled one. The cases are written with
    sign() and arithmetic, so that this runs on tests/error_bounds.py's values too."""
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=False)
    prev = _zeros(state, "prev", p)
    size = _zeros(state, "step_size", p, hp["learning_rate"])
    s = np.sign(g * prev)
    same, flipped = (s * s + s) / 2, (s * s - s) / 2  # 1 where s is 1 (-1), else 0
    size = size * (1 + same * (hp["eta_plus"] - 1) + flipped * (hp["eta_minus"] - 1))
    size = -np.maximum(-np.maximum(size, hp["min_step_size"]), -hp["max_step_size"])
    state["step_size"] = size
    g = state["prev"] = g * (1 - flipped)
    return p - np.sign(g) * size


def asgd(p, g, state, t, hp, convention):
    """Polyak & Juditsky's averaged SGD as torch.optim.ASGD runs it: the step size eta and the
    averaging weight mu are set after each step for the next (eta = lr / (1 + lambd lr
    t)^alpha, mu = 1 / max(1, t - t0); lr and 1 before the first), which torch keeps as
    float32 tensors; the params decay by 1 - lambd eta before the SGD step; ax averages
    them (a copy while mu is 1). L2 weight decay in torch, Keras' decoupled one in Keras."""
    lr, lambd = hp["learning_rate"], hp["lambd"]
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=False)
    eta, mu = state.get("eta", lr), state.get("mu", 1.0)
    if convention == "torch":
        eta, mu = float(np.float32(eta)), float(np.float32(mu))
    p = p * (1 - lambd * eta) - eta * g
    ax = _zeros(state, "ax", p)
    state["ax"] = p.copy() if mu == 1 else ax + (p - ax) * mu
    state["eta"] = lr * (1 + lambd * lr * t) ** -hp["alpha"]  # 0 where the power overflows
    state["mu"] = 1 / max(1, t - hp["t0"])
    return p


def ademamix(p, g, state, t, hp, convention):
    """Pagliardini et al. 2024, Algorithm 1, as bitsandbytes' AdEMAMix documents its options:
    Adam whose numerator mixes the bias-corrected fast EMA m1 (beta_1) with alpha times the
    uncorrected slow EMA m2 (beta_3); alpha warms up linearly over t_alpha steps, beta_3 over
    t_beta3 steps along the paper's half-life schedule, beta_3(t) = min(exp(ln b1 ln b3 /
    ((1 - t/T) ln b3 + (t/T) ln b1)), b3). Decoupled weight decay: theta *= 1 - lr wd in
    torch (bitsandbytes), Keras' theta -= theta wd lr in Keras."""
    lr, b1, b2, b3 = hp["learning_rate"], hp["beta_1"], hp["beta_2"], hp["beta_3"]
    alpha, eps = hp["alpha"], hp["epsilon"]
    if hp.get("t_alpha"):
        alpha = min(t * alpha / hp["t_alpha"], alpha)
    if hp.get("t_beta3"):
        s = t / hp["t_beta3"]
        b3 = min(np.exp(np.log(b1) * np.log(b3) / ((1 - s) * np.log(b3) + s * np.log(b1))), b3)
    p, g = _weight_decay(p, g, hp, convention, decoupled_in_torch=True)
    m1 = state["m1"] = b1 * _zeros(state, "m1", p) + (1 - b1) * g
    m2 = state["m2"] = b3 * _zeros(state, "m2", p) + (1 - b3) * g
    nu = state["nu"] = b2 * _zeros(state, "nu", p) + (1 - b2) * (g * g)
    denominator = np.sqrt(nu / (1 - b2**t)) + eps
    return p - lr * (m1 / (1 - b1**t) + alpha * m2) / denominator


def adan(p, g, state, t, hp, convention):
    """Xie et al. 2022, Algorithm 1, with optimi's betas (the paper's complements) and its
    documented debiasing: each EMA's beta replaced by b_hat = b (1 - b^(t-1)) / (1 - b^t),
    which makes every EMA its own bias-corrected value. d = g - g_prev, 0 at the first step
    (optimi starts prev_grad at the first grad); m, v the EMAs of g and d, n that of the
    squared Nesterov grad (g + b2 d)^2; theta -= lr (m + b2 v) / (sqrt(n) + eps). Decay
    (optimi's docstring): the proximal theta /= 1 + lr wd after the update (lr / max_lr in
    place of lr with decouple_lr; adam_wd: theta *= 1 - lr wd before it instead); Keras'
    theta -= theta wd lr before it in the Keras convention. The state keeps -g_prev under
    "neg_grad", as optimi's prev_grad holds it."""
    lr, eps = hp["learning_rate"], hp["epsilon"]
    b1, b2, b3 = hp["beta_1"], hp["beta_2"], hp["beta_3"]
    wd = hp.get("weight_decay") or 0.0

    def hat(b):
        return b * (1 - b ** (t - 1)) / (1 - b**t)

    g_prev = -state["neg_grad"] if t > 1 else g
    d = g - g_prev
    proximal = 1.0
    if convention == "keras":
        p = p - p * wd * lr
    elif wd:
        rate = lr / (hp.get("max_lr") or lr) if hp.get("decouple_lr") else lr
        if hp.get("adam_wd"):
            p = p * (1 - rate * wd)
        else:
            proximal = 1 + rate * wd
    m = state["m"] = hat(b1) * _zeros(state, "m", p) + (1 - hat(b1)) * g
    v = state["v"] = hat(b2) * _zeros(state, "v", p) + (1 - hat(b2)) * d
    n = state["n"] = hat(b3) * _zeros(state, "n", p) + (1 - hat(b3)) * (g + b2 * d) ** 2
    state["neg_grad"] = -g
    return (p - lr * (m + b2 * v) / (np.sqrt(n) + eps)) / proximal


def ftrl(p, g, state, t, hp, convention):
    """McMahan et al. 2013, Algorithm 1 (per-coordinate FTRL-Proximal), in Keras' generalized
    form (its Ftrl docstring): learning-rate power q = -learning_rate_power instead of 1/2,
    sigma = (n_new^q - n^q) / lr, z += g + 2 l2_shrinkage theta - sigma theta, and
    theta = (sign(z) l1 - z) / (n_new^q / lr + 2 (l2 + beta / (2 lr))) where |z| > l1, else
    0. Keras' weight decay first (both conventions: torch has no Ftrl)."""
    lr, q = hp["learning_rate"], -hp["learning_rate_power"]
    l1 = hp["l1_regularization_strength"]
    l2 = hp["l2_regularization_strength"] + hp["beta"] / (2 * lr)
    p, g = _weight_decay(p, g, hp, "keras", decoupled_in_torch=False)
    n = _zeros(state, "accumulator", p, hp["initial_accumulator_value"])
    z = _zeros(state, "linear", p)
    n_new = n + g * g
    sigma = (n_new**q - n**q) / lr
    z = state["linear"] = z + g + 2 * hp["l2_shrinkage_regularization_strength"] * p - sigma * p
    state["accumulator"] = n_new
    # The paper's theta = 0 where |z| <= l1, else (sign(z) l1 - z) / quadratic, written as
    # (clip(z, -l1, l1) - z) / quadratic with maxima, so that it runs on error_bounds' values.
    clipped = -np.maximum(-np.maximum(z, -l1), -l1)
    return (clipped - z) / (n_new**q / lr + 2 * l2)


# --- Newton-Schulz: Muon ----------------------------------------------------------------------

def newton_schulz(u, a, b, c, steps, eps, bf16=False, keras=False):
    """Jordan's quintic Newton-Schulz on one matrix, in float64: X = u (transposed when tall)
    over its Frobenius norm (torch: max(norm, eps); Keras: norm + 1e-7), then ``steps``
    times A = X X^T, B = b A + c A A, X = a X + B X. ``bf16``: each result stored in
    bfloat16, as torch.optim.Muon computes it (its products accumulate in float32)."""
    def store(x):
        return rounded(x, "bfloat16") if bf16 else x
    tall = u.shape[0] > u.shape[1]
    x = store(u.T if tall else u)
    norm = np.sqrt(np.sum(x * x))
    x = store(x / (norm + 1e-7 if keras else store(max(store(norm), eps))))
    for _ in range(steps):
        gram = store(x @ x.T)
        poly = store(b * gram + c * (gram @ gram))
        x = store(a * x + poly @ x)
    return x.T if tall else x


def muon(p, g, state, t, hp, convention):
    """Muon (Jordan et al. 2024; Liu et al. 2025 for the RMS-matching scale) on a 2-D param.
    torch.optim.Muon: m = mu m + (1 - mu) g, u = (1 - mu) g + mu m with Nesterov, NS in
    bfloat16, theta (1 - lr wd) - lr s O with s = sqrt(max(1, A/B)) or 0.2 sqrt(max(A, B)).
    keras.optimizers.Muon: m = mu m + g, u = g + mu m with Nesterov, NS in the variable's
    dtype, theta - theta wd lr - lr O sqrt(max(A, B)) rms_rate."""
    lr, mu, wd = hp["learning_rate"], hp["momentum"], hp.get("weight_decay") or 0.0
    m = _zeros(state, "m", p)
    if convention == "torch":
        m = state["m"] = mu * m + (1 - mu) * g
        u = (1 - mu) * g + mu * m if hp["nesterov"] else m
    else:
        m = state["m"] = mu * m + g
        u = g + mu * m if hp["nesterov"] else m
    o = newton_schulz(u, hp["muon_a"], hp["muon_b"], hp["muon_c"], hp["ns_steps"],
                      hp["epsilon"], bf16=convention == "torch", keras=convention == "keras")
    rows, cols = p.shape
    if convention == "torch":
        scale = (0.2 * np.sqrt(max(rows, cols)) if hp.get("adjust_lr_fn") == "match_rms_adamw"
                 else np.sqrt(max(1.0, rows / cols)))
        return p * (1 - lr * wd) - lr * scale * o
    rate = hp.get("rms_rate")
    scale = 1.0 if rate is None else np.sqrt(max(rows, cols)) * rate
    return p - p * wd * lr - lr * o * scale
