"""Hostile inputs, one test each: each gets the peers' behaviour (real torch.optim and Keras 3
runs) or a clear error, and none corrupts state: after an error every param, every state
array and the step count are as they were."""

import numpy as np
import peers
import pytest
import variants
from tolerances import VS_PEER_FLOAT32

import fusedopt
from fusedopt.algorithms.registry import CONVENTIONS, REGISTRY

pytest.importorskip("torch")
pytest.importorskip("keras")

NAMES = sorted(REGISTRY)
LEARNING_RATE = 0.01


def _peer(name, convention):
    """The real library that defines ``name`` in ``convention`` (Lion has no torch.optim
    class; its torch convention without weight decay is Keras' rule)."""
    if convention == "keras" and name in peers.KERAS:
        return peers.run_keras
    if convention == "torch" and name in peers.TORCH:
        return peers.run_torch
    if convention == "torch" and name == "lion":
        return peers.run_keras
    return None


PEER_CASES = [(n, c) for n in NAMES for c in CONVENTIONS if _peer(n, c) is not None]
PEER_IDS = [f"{n}-{c}" for n, c in PEER_CASES]


def _hyper(name, convention, **overrides):
    """(our arguments, the peer's full hyperparameters): Keras' defaults but torch's own
    epsilon in the torch convention, momentum on where there is one."""
    spec = REGISTRY[name]
    ours = {"learning_rate": LEARNING_RATE, **overrides}
    known = {h.name for h in spec.hypers}
    if "momentum" in known and "momentum" not in ours:
        ours["momentum"] = 0.9
    if convention == "torch" and "epsilon" in known and "epsilon" not in ours:
        ours["epsilon"] = 1e-8
    return ours, {**spec.defaults(), **ours}


def _run_ours(name, convention, hp, p0, grads, backend="cpu"):
    p = p0.copy()
    opt = variants.make(name, hp, convention, backend)
    for g in grads:
        opt.apply_gradients([(g.copy(), p)])
    return p, opt


def _infinities(a):
    return np.where(np.isinf(a), np.sign(a), 0.0)


def _assert_like_peer(ours, peer, what):
    """Same NaNs, same infinities (and signs), finite values within the peer tolerance
    (relative for large values)."""
    assert np.array_equal(np.isnan(ours), np.isnan(peer)), f"{what}: NaNs {ours} vs {peer}"
    assert np.array_equal(_infinities(ours), _infinities(peer)), \
        f"{what}: infinities {ours} vs {peer}"
    finite = np.isfinite(ours)
    scale = np.maximum(1.0, np.abs(peer[finite]))
    assert np.all(np.abs(ours[finite] - peer[finite]) <= VS_PEER_FLOAT32 * scale), \
        f"{what}: {ours} vs {peer}"


def _snapshot(opt, params):
    return [p.copy() for p in params], [np.array(s) for s in opt.variables], opt.iterations


def _assert_unchanged(opt, params, snapshot):
    before, state, iterations = snapshot
    for p, b in zip(params, before):
        assert p.tobytes() == b.tobytes()
    for s, b in zip(opt.variables, state):
        assert s.tobytes() == b.tobytes()
    assert opt.iterations == iterations


def _built(n=3, size=6, name="adam"):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(np.float32) for _ in range(n)]
    opt = variants.make(name, dict(learning_rate=0.1), "keras", "cpu")
    opt.apply_gradients([(np.ones(size, np.float32), p) for p in params])
    return opt, params


# --- non-finite grads ---------------------------------------------------------------------------

P0 = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.5], np.float32)


#: Keras on its torch backend takes torch.sign(NaN) = 0: a NaN grad freezes a Lion element
#: (its momentum turns NaN and every later sign is 0). fusedopt's sign(NaN) is NaN, as in
#: NumPy, JAX and TensorFlow (Keras on those backends), so the NaN reaches the param.
SIGN_OF_NAN_IS_ZERO_IN_PEER = {"lion"}


@pytest.mark.parametrize("name, convention", PEER_CASES, ids=PEER_IDS)
def test_nan_grads_propagate_as_in_the_peers(name, convention):
    nan = np.float32(np.nan)
    grads = [np.array([nan, 0.1, 0.2, 0.3, 1.0, -0.2], np.float32),
             np.array([0.1, 0.2, 0.3, nan, -0.5, 0.1], np.float32),
             np.array([0.1, -0.2, 0.3, 0.4, -0.5, 0.1], np.float32)]
    ours_hp, peer_hp = _hyper(name, convention)
    ours, _ = _run_ours(name, convention, ours_hp, P0, grads)
    peer = _peer(name, convention)(name, peer_hp, P0, grads)
    if name in SIGN_OF_NAN_IS_ZERO_IN_PEER:
        hit = np.isnan(np.stack(grads)).any(axis=0)
        assert np.isnan(ours[hit]).all() and np.isfinite(peer[hit]).all()
        ours, peer = ours[~hit], peer[~hit]
    assert np.isnan(ours).any() or name in SIGN_OF_NAN_IS_ZERO_IN_PEER
    _assert_like_peer(ours, peer, f"{name} {convention}")


@pytest.mark.parametrize("name, convention", PEER_CASES, ids=PEER_IDS)
def test_inf_grads_propagate_as_in_the_peers(host_cuda, name, convention):
    """An inf grad makes a param +-inf where it does in the peers, on every backend (CUDA:
    the host execution), and without weight decay the inf stays: the decay term is skipped,
    not applied with wd = 0 (inf * 0 is NaN)."""
    inf = np.float32(np.inf)
    grads = [np.array([inf, -inf, 0.2, 0.3, 1.0, -0.2], np.float32),
             np.array([0.1, 0.2, -inf, 0.3, -0.5, 0.1], np.float32),
             np.array([0.1, -0.2, 0.3, 0.4, -0.5, 0.1], np.float32)]
    ours_hp, peer_hp = _hyper(name, convention)
    peer = _peer(name, convention)(name, peer_hp, P0, grads)
    cuda = ("cuda",) if REGISTRY[name].on_cuda else ()
    for backend in ("cpu", "unfused", *cuda):
        ours, _ = _run_ours(name, convention, ours_hp, P0, grads, backend)
        _assert_like_peer(ours, peer, f"{name} {convention} {backend}")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_grads_with_loss_scaling_skip_the_step_as_torch_grad_scaler(bad):
    """With ``grad_scale`` (loss scaling) an inf or NaN grad skips the step: no param, no state
    and no count changes, as torch.amp.GradScaler skips ``optimizer.step()``."""
    import torch
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(6).astype(np.float32)
    true_grads = [rng.standard_normal(6).astype(np.float32) for _ in range(3)]
    true_grads[1][4] = bad

    t = torch.tensor(p0.copy(), requires_grad=True)
    opt_t = torch.optim.Adam([t], lr=0.1, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=10**6)
    scales, grads = [], []
    for g in true_grads:   # the loss is sum(t * g): its grad is g times the loss scale
        opt_t.zero_grad()
        scales.append(scaler.get_scale())
        scaler.scale((t * torch.from_numpy(g)).sum()).backward()
        grads.append(t.grad.numpy().copy())
        scaler.step(opt_t)
        scaler.update()

    p = p0.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    applied = []
    step = 1
    for g, scale in zip(grads, scales):
        before = (p.copy(), m.copy(), v.copy())
        ok = fusedopt.functional.update("adam", [p], [g], [[m, v]], step=step,
                                        convention="torch", learning_rate=0.1, epsilon=1e-8,
                                        grad_scale=scale)
        applied.append(ok)
        if ok:
            step += 1
        else:
            assert all(a.tobytes() == b.tobytes() for a, b in zip((p, m, v), before))
    assert applied == [True, False, True]
    assert opt_t.state[t]["step"].item() == 2          # torch skipped the same step
    _assert_like_peer(p, t.detach().numpy(), "Adam with loss scaling")


# --- params the optimizer does not hold, or holds twice -----------------------------------------

def test_grad_for_a_param_the_optimizer_was_not_built_with():
    opt, params = _built()
    snapshot = _snapshot(opt, params)
    stranger = np.zeros(6, np.float32)
    with pytest.raises(KeyError, match=r"built for 3 params and this ndarray of shape \(6,\) is "
                                       r"not one of them"):
        opt.apply_gradients([(np.ones(6, np.float32), params[0]),
                             (np.ones(6, np.float32), stranger)])
    _assert_unchanged(opt, params, snapshot)


def test_param_list_that_changes_length_between_steps():
    """Longer (a new param): refused, nothing changes. Shorter (a subset): stepped, as Keras
    steps the variables it is given; the others keep their values and state."""
    opt, params = _built()
    snapshot = _snapshot(opt, params)
    extra = params + [np.zeros(6, np.float32)]
    with pytest.raises(KeyError, match="not one of them"):
        opt.apply_gradients([(np.ones(6, np.float32), p) for p in extra])
    _assert_unchanged(opt, params, snapshot)

    untouched = params[2].copy(), {k: v.copy() for k, v in opt.state(params[2]).items()}
    grads = [np.full(6, 0.5, np.float32) for _ in params[:2]]
    opt.apply_gradients(zip(grads, params[:2]))
    twin, twin_params = _built()
    twin.apply_gradients(zip(grads, twin_params[:2]))
    assert params[2].tobytes() == untouched[0].tobytes()
    assert all(opt.state(params[2])[k].tobytes() == v.tobytes() for k, v in untouched[1].items())
    for a, b in zip(params[:2], twin_params[:2]):
        assert a.tobytes() == b.tobytes()


def test_the_same_array_passed_twice():
    rng = np.random.default_rng(1)
    p = rng.standard_normal(6).astype(np.float32)
    before = p.copy()
    g = np.ones(6, np.float32)
    fresh = fusedopt.Adam()
    with pytest.raises(ValueError, match="param 1 is already held by this optimizer"):
        fresh.apply_gradients([(g, p), (g, p)])
    assert not fresh._params and p.tobytes() == before.tobytes()
    buffer = rng.standard_normal(12).astype(np.float32)
    with pytest.raises(ValueError, match="param 1 shares memory with param 0"):
        fusedopt.Adam().apply_gradients([(g, buffer[:6]), (g, buffer.reshape(2, 6)[0])])

    opt, params = _built()
    snapshot = _snapshot(opt, params)
    with pytest.raises(ValueError, match="appears twice"):
        opt.apply_gradients([(g, params[0]), (g, params[0])])
    _assert_unchanged(opt, params, snapshot)


@pytest.mark.parametrize("alias", ["itself", "a view", "another param", "a later step"])
def test_grad_that_aliases_a_param_is_refused(alias):
    """Refused rather than copied: the pass reads grads while it writes params, and a param
    passed as its own grad is almost always a mistake a silent copy would hide."""
    opt, params = _built()
    if alias == "a later step":  # the usual-layout shortcut must not let it through
        opt.apply_gradients([(np.ones(6, np.float32), p) for p in params])
    snapshot = _snapshot(opt, params)
    grads = [np.ones(6, np.float32) for _ in params]
    grads[1] = {"itself": params[1], "a view": params[1][...], "another param": params[0],
                "a later step": params[1]}[alias]
    whose = "param 0" if alias == "another param" else "its own param"
    with pytest.raises(ValueError, match=rf"param 1: the grad shares memory with {whose}"):
        opt.apply_gradients(zip(grads, params))
    _assert_unchanged(opt, params, snapshot)
    opt.apply_gradients([(g.copy(), p) for g, p in zip(grads, params)])  # a copy is fine


# --- odd arrays and values ----------------------------------------------------------------------

@pytest.mark.parametrize("name, convention", PEER_CASES, ids=PEER_IDS)
def test_zero_dimensional_param(name, convention):
    p0 = np.array(1.25, np.float32)
    grads = [np.array(v, np.float32) for v in (0.5, -0.25, 2.0)]
    ours_hp, peer_hp = _hyper(name, convention)
    ours, opt = _run_ours(name, convention, ours_hp, p0, grads)
    assert ours.shape == () and all(s.shape == () for s in opt.variables)
    peer = _peer(name, convention)(name, peer_hp, p0, grads)
    _assert_like_peer(np.atleast_1d(ours), np.atleast_1d(peer), f"{name} {convention} 0-d")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, bool, object, np.complex64])
def test_integer_bool_and_object_dtypes_are_refused(dtype):
    opt, params = _built()
    snapshot = _snapshot(opt, params)
    odd = np.ones(6, dtype)
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"param 0 has dtype {name}; adam supports float32, "
                                        r"float64, float16, bfloat16 params: convert with "
                                        r".astype\(np.float32\)"):
        fusedopt.Adam().apply_gradients([(odd.copy(), odd)])
    with pytest.raises(TypeError, match=rf"param 1: grad dtype {name} cannot update a float32 param"):
        opt.apply_gradients([(np.ones(6, np.float32), params[0]), (odd, params[1])])
    _assert_unchanged(opt, params, snapshot)


@pytest.mark.parametrize("name, convention", PEER_CASES, ids=PEER_IDS)
def test_huge_learning_rate(name, convention):
    """1e30 fits float32: the updates overflow as the peers' do. 1e39 does not: torch.optim
    refuses it ('value cannot be converted to type float without overflow'), and so does
    fusedopt, before anything changes (Keras would cast it to inf)."""
    grads = [np.array([0.5, 0.0, -1.0, 1e-3, 3.0, -2.0], np.float32)] * 2
    ours_hp, peer_hp = _hyper(name, convention, learning_rate=1e30)
    ours, _ = _run_ours(name, convention, ours_hp, P0, grads[:1])
    peer = _peer(name, convention)(name, peer_hp, P0, grads[:1])
    _assert_like_peer(ours, peer, f"{name} {convention} lr=1e30")

    p = P0.copy()
    opt = variants.make(name, dict(ours_hp, learning_rate=1e39), convention, "cpu")
    with pytest.raises(ValueError, match=r"a step scalar computed from the hyperparameters is "
                                         r"1e\+39, beyond the largest finite value of the "
                                         r"float32 math"):
        opt.apply_gradients([(grads[0].copy(), p)])
    assert p.tobytes() == P0.tobytes() and opt.iterations == 0
    if convention == "torch" and name in peers.TORCH:
        with pytest.raises(RuntimeError, match="without overflow"):
            peers.run_torch(name, dict(peer_hp, learning_rate=1e39), P0, grads[:1])


EPSILON_CASES = [(n, c) for n, c in PEER_CASES
                 if "epsilon" in {h.name for h in REGISTRY[n].hypers}]


@pytest.mark.parametrize("name, convention", EPSILON_CASES,
                         ids=[f"{n}-{c}" for n, c in EPSILON_CASES])
def test_epsilon_zero_with_zero_grads(name, convention):
    """0 / 0 where the peers divide 0 by 0 (NaN), and nowhere else."""
    overrides = dict(epsilon=0.0)
    if "initial_accumulator_value" in {h.name for h in REGISTRY[name].hypers}:
        overrides["initial_accumulator_value"] = 0.0
    ours_hp, peer_hp = _hyper(name, convention, **overrides)
    grads = [np.zeros(6, np.float32)] * 2
    ours, _ = _run_ours(name, convention, ours_hp, P0, grads)
    peer = _peer(name, convention)(name, peer_hp, P0, grads)
    _assert_like_peer(ours, peer, f"{name} {convention} epsilon=0")


def _fortran(values):
    out = np.asfortranarray(values)
    assert out.flags.f_contiguous and not out.flags.c_contiguous
    return out


@pytest.mark.parametrize("grad_order", ["F", "C"])
@pytest.mark.parametrize("backend", ["cpu", "unfused", "cuda"])
def test_fortran_ordered_param_is_updated_as_a_c_ordered_one(request, backend, grad_order):
    """A Fortran-ordered param is contiguous memory: it is updated in place, its state is
    made Fortran-ordered beside it and a C-ordered grad is copied into its order; the bits
    equal those of the same values in C order. A strided view is still refused, as such."""
    if backend == "cuda":
        request.getfixturevalue("host_cuda")
    rng = np.random.default_rng(4)
    values = rng.standard_normal((37, 53)).astype(np.float32)
    grads = [rng.standard_normal((37, 53)).astype(np.float32) for _ in range(4)]
    c_param, f_param = values.copy(), _fortran(values)
    hp = dict(learning_rate=0.1, amsgrad=True, weight_decay=0.01)
    c_opt = fusedopt.Adam(**hp, backend=backend)
    f_opt = fusedopt.Adam(**hp, backend=backend)
    for g in grads:
        c_opt.apply_gradients([(g, c_param)])
        f_opt.apply_gradients([(_fortran(g) if grad_order == "F" else g.copy(), f_param)])
    assert f_param.flags.f_contiguous and not f_param.flags.c_contiguous
    assert np.array_equal(c_param, f_param) and c_param.tobytes() == f_param.tobytes(order="C")
    for name, s in f_opt.state(f_param).items():
        assert s.flags.f_contiguous and not s.flags.c_contiguous
        assert np.array_equal(s, c_opt.state(c_param)[name])

    strided = np.zeros((37, 106), np.float32)[:, ::2]
    with pytest.raises(ValueError, match=r"param 0 is a non-contiguous view") as error:
        fusedopt.Adam(backend=backend).apply_gradients([(values, strided)])
    assert "Fortran" not in str(error.value)


@pytest.mark.parametrize("backend", ["cpu", "unfused", "cuda"])
def test_huge_finite_grads_with_loss_scaling_and_norm_clipping(request, backend):
    """Grads of 1e20 in float32 are finite though their squares are not: a loss-scaled step
    is applied (not skipped as if they were inf), and a norm clip scales them to the clip
    norm (not to 0). The norms are sums of float64 squares on every backend."""
    if backend == "cuda":
        request.getfixturevalue("host_cuda")
    g = np.array([1e20, -3e20, 2e20], np.float32)
    p = np.zeros(3, np.float32)
    assert fusedopt.functional.update("sgd", [p], [g], [[]], step=1, backend=backend,
                                      learning_rate=0.5, grad_scale=1.0)
    assert p.tobytes() == (-np.float32(0.5) * g).tobytes()
    p = np.zeros(3, np.float32)
    fusedopt.SGD(learning_rate=1.0, clipnorm=1.0, backend=backend).apply_gradients([(g, p)])
    want = -g.astype(np.float64) / np.linalg.norm(g.astype(np.float64))
    np.testing.assert_allclose(p, want, rtol=1e-6)
