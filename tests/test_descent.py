"""Tests for gradflow.descent (simulate_descent), its optax transformations (gradflow.optimizers) and
gradflow.compare.

Sizes are tiny and the options repeat across tests (same shapes, same number of save points) so the
compiled loops are shared: most calls below hit the jit cache of an earlier one.
"""

from __future__ import annotations

import inspect
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
import gradflow.descent as descent_module
from gradflow.compare import compare
from gradflow.descent import NormalizedGD, normalized_gd, simulate_descent
from gradflow.errors import InvalidArgumentError, InvalidTypeError
from gradflow.flow import simulate_flow
from gradflow.models import Linear
from gradflow.optimizers import BatchLoss, DescentState, DescentStep, gd, timed
from gradflow.precision import x64
from gradflow.result import load_result

N, D = 8, 3
_rng = np.random.default_rng(0)
_W_STAR = np.array([1.0, -1.0, 0.5]) / 1.5
X = _rng.standard_normal((N, D))
Y = np.where(X @ _W_STAR >= 0, 1.0, -1.0)
X = X + 0.5 * Y[:, None] * _W_STAR  # separable with margin ≥ 0.5 along w*
T_END = 2.0
NUM_SAVE = 5  # every run below saves at 5 iterations (shape shared by the compiled loops)
_FLOW_SAVES_PARAMS = "save_params" in inspect.signature(simulate_flow).parameters


def _model() -> Linear:
    """A linear model with L(W_0) < ℓ(0) = 1 (Assumption 2.3) whose direction still moves."""
    m = Linear(D, key=jax.random.key(0))
    with x64():
        return eqx.tree_at(lambda mm: mm.w, m, jnp.asarray([3.0, -1.0, 3.5]))


def _flat(result) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in result.params.values()])


@pytest.fixture(scope="module")
def flow_end():
    """The flow at t = T_END, integrated tightly (the reference for GD's Euler error)."""
    kw = {"save_params": True} if _FLOW_SAVES_PARAMS else {}
    return simulate_flow(_model(), (X, Y), T_END, rtol=1e-11, atol=1e-13, save_at=np.linspace(0, T_END, NUM_SAVE), **kw)


def _gd(eta: float, **kw):
    steps = round(T_END / eta)
    return simulate_descent(_model(), (X, Y), "gd", steps, learning_rate=eta, save_at=np.linspace(0, steps, NUM_SAVE).round().astype(int), **kw)


def test_gd_first_order_in_eta(flow_end):
    """GD is Euler's method on the flow: ‖W_K − W(Kη)‖ = Cη + O(η²), so halving η halves the error.

    With η ≤ 0.02 the O(η²) term is a few percent of Cη, so the ratio lies in [1.9, 2.1] (measured: 2.002, 2.001)."""
    w_flow = _flat(flow_end)
    errors = []
    for eta in (0.02, 0.01, 0.005):
        r = _gd(eta)
        assert r.status == "completed"
        np.testing.assert_allclose(r.t[-1], T_END, rtol=1e-12)
        assert r.iteration[-1] == round(T_END / eta)
        errors.append(np.linalg.norm(_flat(r) - w_flow))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.9) & (ratios < 2.1)), (errors, ratios)
    # the same diagnostics as the flow, close at matched t
    np.testing.assert_allclose(r.accuracy, flow_end.accuracy, rtol=1e-2)
    np.testing.assert_allclose(r.path_length[-1], flow_end.path_length[-1], rtol=1e-2)
    assert set(flow_end.diagnostics) - {"params_flat"} <= set(r.diagnostics)
    assert "iteration" in r.diagnostics


def test_normalized_gd_reaches_ln_n_over_L_2000():
    """Normalized GD (exponential loss: gradient ascent on α) runs far past L = e^(−745)."""
    r = simulate_descent(_model(), (X, Y), normalized_gd(1.0), 20_000, until_accuracy=2000.0, num_save=NUM_SAVE)
    assert r.status == "stopped at target", r.reason
    assert r.accuracy[-1] >= 2000.0
    assert all(np.all(np.isfinite(v)) for v in r.params.values())
    assert np.all(np.isfinite(r.log_t)[1:]) and r.log_t[-1] > 1000  # t = Σ η/L_k ≈ e^2000 overflows, ln t does not
    assert np.all(np.isfinite(r.angle)) and np.all(np.isfinite(r.margin))
    assert r.stats["gradient_evaluations"] == r.stats["steps"] == r.iteration[-1] < 20_000


def test_normalized_gd_step_is_gradient_ascent_on_alpha():
    """One exponential-loss step: W_1 = W_0 + η ∇α(W_0) with α = −ln Σ_i e^(−y_i⟨w, x_i⟩)."""
    eta = 0.3
    r = simulate_descent(_model(), (X, Y), "normalized", 1, learning_rate=eta, save_at=[0])
    w0 = np.asarray(_model().w)
    q = np.exp(-(Y * (X @ w0)))
    grad_alpha = (q / q.sum()) @ (Y[:, None] * X)
    np.testing.assert_allclose(r.params[".w"], w0 + eta * grad_alpha, rtol=1e-13)
    # clipping the update norm shortens the step (and its time Δt = c η / L)
    r2 = simulate_descent(_model(), (X, Y), "normalized", 1, learning_rate=eta, max_update_norm=1e-3, save_at=[0])
    np.testing.assert_allclose(np.linalg.norm(r2.params[".w"] - w0), 1e-3, rtol=1e-12)
    assert r2.log_t[-1] < r.log_t[-1]


def test_adam_runs_with_diagnostics():
    opt = optax.adam(0.05)
    r = simulate_descent(_model(), (X, Y), opt, 400, learning_rate=0.05, num_save=NUM_SAVE)
    assert r.status == "completed"
    assert np.all(np.isfinite(r.angle))
    assert np.all(np.diff(r.norm) > 0)  # separable data: ‖W‖ grows
    assert np.all(np.diff(r.accuracy) > 0)
    np.testing.assert_allclose(r.t[-1], 400 * 0.05, rtol=1e-12)
    # the nominal rate can also be read from an inject_hyperparams state
    r2 = simulate_descent(_model(), (X, Y), optax.inject_hyperparams(optax.adam)(learning_rate=0.05), 400, num_save=NUM_SAVE)
    np.testing.assert_allclose(r2.t[-1], 20.0, rtol=1e-6)
    np.testing.assert_allclose(r2.params[".w"], r.params[".w"], rtol=1e-6)


def test_save_load_round_trip(tmp_path):
    r = _gd(0.02, save_params=True)
    path = r.save(tmp_path / "gd")
    back = load_result(path, like=_model())
    assert back.status == r.status and back.stats == r.stats and back.config == r.config
    assert set(back.diagnostics) == set(r.diagnostics)
    for k in r.diagnostics:
        np.testing.assert_array_equal(back.diagnostics[k], r.diagnostics[k])
    np.testing.assert_array_equal(np.asarray(back.model.w), r.params[".w"])


def test_batch_sgd_is_deterministic():
    kw = dict(batch_size=3, num_save=NUM_SAVE, learning_rate=0.05)
    a = simulate_descent(_model(), (X, Y), "sgd", 60, seed=7, **kw)
    b = simulate_descent(_model(), (X, Y), "sgd", 60, seed=7, **kw)
    c = simulate_descent(_model(), (X, Y), "sgd", 60, seed=8, **kw)
    for k in a.diagnostics:
        np.testing.assert_array_equal(a.diagnostics[k], b.diagnostics[k])
    assert not np.array_equal(a.params[".w"], c.params[".w"])
    np.testing.assert_allclose(a.t[-1], 60 * 0.05, rtol=1e-12)


def test_failure_keeps_earlier_save_points():
    """A schedule that turns NaN at k = 12 makes W non-finite: status 'failed', earlier rows kept."""

    def sched(k):
        return jnp.where(k < 12, 0.01, jnp.nan)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = simulate_descent(_model(), (X, Y), "gd", 40, learning_rate=sched, save_at=[0, 5, 10, 20, 40])
    assert r.status == "failed" and "non-finite" in r.reason
    assert list(r.iteration) == [0, 5, 10, 12]  # the save points before, then the last finite iterate
    assert all(np.all(np.isfinite(v)) for v in r.params.values())


def test_compare():
    fine = _gd(0.005, save_params=True)
    coarse = _gd(0.02, save_params=True)
    same = compare(fine, fine)
    assert same["max_param_distance"] == 0.0 and same["max_angle"] == 0.0
    assert same["max_margin_wasserstein"] == 0.0
    c = compare(coarse, fine)
    np.testing.assert_allclose(c["times"], coarse.t)
    assert 0 < c["max_param_distance"] < 0.1
    assert np.all(np.isfinite(c["angle"])) and c["max_angle"] < 0.05
    assert np.all(c["margin_wasserstein"] <= c["margin_max_abs_diff"] + 1e-15)
    without = compare(coarse, _gd(0.005))
    assert without["param_distance"] is None and np.all(np.isnan(without["angle"]))
    assert np.all(np.isfinite(without["margin_wasserstein"]))


@pytest.mark.skipif(not _FLOW_SAVES_PARAMS, reason="simulate_flow has no save_params yet")
def test_compare_with_flow(flow_end):
    """GD's distance to the flow at the shared save times t_j = jT/4 is O(η) and matches the final one."""
    gd = _gd(0.005, save_params=True)
    c = compare(gd, flow_end)
    np.testing.assert_allclose(c["times"], flow_end.t, rtol=1e-12)
    assert c["param_distance"][0] == 0.0
    np.testing.assert_allclose(c["param_distance"][-1], np.linalg.norm(_flat(gd) - _flat(flow_end)), rtol=1e-9)
    assert c["max_param_distance"] < 1e-3
    assert np.all(c["angle"] < 1e-3)


def test_validation():
    data = (X, Y)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        simulate_descent(_model(), data, "gd", 10)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        simulate_descent(_model(), data, optax.adam(0.1), 10)
    with pytest.raises(InvalidTypeError, match="optimizer"):
        simulate_descent(_model(), data, 0.1, 10)
    with pytest.raises(InvalidArgumentError, match="steps"):
        simulate_descent(_model(), data, "gd", 0, learning_rate=0.1)
    with pytest.raises(InvalidArgumentError, match="save_at"):
        simulate_descent(_model(), data, "gd", 10, learning_rate=0.1, save_at=[0, 20])
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        simulate_descent(_model(), data, "gd", 10, learning_rate=0.1, batch_size=N + 1)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        simulate_descent(_model(), data, "gd", 10, learning_rate=-1.0)
    with pytest.raises(InvalidArgumentError, match="until_accuracy"):
        simulate_descent(_model(), data, "normalized", 10, until_accuracy=1e-3)
    with pytest.raises(InvalidArgumentError, match="labels"):
        simulate_descent(_model(), (X, (Y > 0).astype(float)), "gd", 10, learning_rate=0.1)
    # a transformation that owns its rate: a second rate or an update cap in simulate_descent is refused
    with pytest.raises(InvalidArgumentError, match="learning_rate: is given twice .also as gd's learning_rate"):
        simulate_descent(_model(), data, gd(0.1), 10, learning_rate=0.1)
    with pytest.raises(InvalidArgumentError, match="max_update_norm.*normalized_gd"):
        simulate_descent(_model(), data, normalized_gd(1.0), 10, max_update_norm=1.0)
    with pytest.raises(InvalidArgumentError, match="learning_rate"):
        gd(0.0)
    with pytest.raises(InvalidArgumentError, match="eta"):
        normalized_gd(-1.0)


# ==================================================================================================
# the descent transformations (gradflow.optimizers) against references written out from their formulas
# ==================================================================================================

# One step's batch, in the regimes that matter: moderate ln L, and ln L = −2000 where L, ∇L and
# exp(ln L) underflow float64 (the regime of normalized GD's long runs). ln(n/b) = ln(8/3).
_LOG_LOSSES = (-0.7, -3.0, -40.0, -2000.0)
_LOG_SCALE = float(np.log(8 / 3))


@pytest.fixture
def f64():
    with x64():
        yield


def _params() -> dict:
    return {"a": jnp.asarray(np.linspace(-1.0, 2.0, 6).reshape(2, 3)), "b": jnp.asarray([0.3, -0.2, 0.9, 1.7])}


def _batch(i: int, log_loss: float) -> BatchLoss:
    """ln|ℓ'(α̂)| = ln Σ_B ℓ (the exponential loss), ∇α̂ with norms from 0.5 to 20 (so a cap of 1 clips
    some steps and not others)."""
    rng = np.random.default_rng(i)
    g = {"a": jnp.asarray(rng.standard_normal((2, 3))), "b": jnp.asarray(rng.standard_normal(4))}
    scale = (0.5, 20.0, 1.0, 3.0)[i % 4] / float(np.sqrt(sum(np.sum(np.square(v)) for v in g.values())))
    g = {k: v * scale for k, v in g.items()}
    norm = jnp.sqrt(sum(jnp.vdot(v, v) for v in g.values()))
    return BatchLoss(jnp.asarray(log_loss), jnp.asarray(_LOG_SCALE), jnp.asarray(log_loss), g, norm)


def _run_transformation(tx, steps: int) -> list:
    """(W_k, U_k, ln Δt_k) of ``steps`` updates U_k of ``tx`` (each compiled), W_{k+1} = W_k + U_k from
    _params(). The updates are compared, not W_{k+1}: a 1-ulp change of U_k mostly vanishes when
    rounded into W."""
    params = _params()
    state = tx.init(params)
    update = eqx.filter_jit(lambda tx, params, state, bl: tx.update(bl.gradient(), state, params, loss=bl))
    out = []
    for i in range(steps):
        updates, state = update(tx, params, state, _batch(i, _LOG_LOSSES[i % len(_LOG_LOSSES)]))
        out.append((params, updates, state.log_dt))
        params = optax.apply_updates(params, updates)
    assert int(state.count) == steps
    return out


def _assert_same_bits(actual, expected):
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True):
        assert a.dtype == e.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def _schedule(k):
    return 0.3 / (1.0 + 0.5 * k)


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize("rate", [0.05, _schedule], ids=["constant", "schedule"])
def test_gd_transformation_is_its_formula_bit_for_bit(rate):
    """gd: U_k = exp(ln η_k + ln|ℓ'(α̂)| + ln(n/b)) ∇α̂, ln Δt_k = ln η_k. Against the formula written
    out in eager jax.numpy (one XLA op at a time, where the update is compiled and fused): bit for bit
    at each of 8 steps across ln L = −0.7 … −2000. And it is GD on L̂: at moderate ln L, U_k = −η_k ∇L̂
    with ∇L̂ = −(n/b) e^(ln|ℓ'|) ∇α̂ formed in linear space (to rounding, rtol 1e-14); at ln L = −2000
    that gradient underflows to exactly 0, and so does gd's update."""
    for k, (_, step, log_dt) in enumerate(_run_transformation(gd(rate), 8)):
        bl = _batch(k, _LOG_LOSSES[k % len(_LOG_LOSSES)])
        eta = jnp.asarray(rate(jnp.asarray(k)) if callable(rate) else rate, jnp.float64)
        coef = jnp.exp(jnp.log(eta) + (bl.log_neg_dloss + bl.log_batch_scale))
        _assert_same_bits(step, {n: coef * g for n, g in bl.grad_alpha.items()})
        _assert_same_bits(log_dt, jnp.log(eta))
        grad_l = {n: -(8 / 3) * np.exp(float(bl.log_neg_dloss)) * np.asarray(g) for n, g in bl.grad_alpha.items()}
        for n in step:
            np.testing.assert_allclose(step[n], -float(eta) * grad_l[n], rtol=1e-14, atol=0)
            if float(bl.log_loss) < -745:  # ∇L̂ underflows: no step, in either form
                assert not np.any(step[n]) and not np.any(grad_l[n])


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize("rate, cap", [(0.05, None), (0.8, 1.0), (_schedule, 1.0)], ids=["no cap", "cap", "schedule, cap"])
def test_normalized_gd_transformation_is_its_formula_bit_for_bit(rate, cap):
    """normalized GD (Appendix A): ln c_k = min(0, ln u − (ln η_k + ln|ℓ'| − ln Σ_B ℓ) − ln‖∇α̂‖),
    W ← W + exp(ln η_k + ln|ℓ'| − ln Σ_B ℓ + ln c_k) ∇α̂, ln Δt_k = ln η_k + ln c_k − (ln Σ_B ℓ + ln(n/b)).
    Against the formula written out as in the gd test: bit for bit at each of 8 steps down to
    ln L = −2000. What it means, to rounding (rtol 1e-13; atol 1e-14 for the update, a difference
    of W's of size 2 and its cancellation): the update is the GD step −Δt_k ∇L̂ (at moderate ln L,
    where ∇L̂ is representable), its norm is min(η_k‖∇α̂‖·|ℓ'|/Σ_Bℓ, u), and the cap
    clips some steps and not others."""
    log_u = math.inf if cap is None else math.log(cap)
    clipped = []
    for k, (_, step, log_dt) in enumerate(_run_transformation(normalized_gd(rate, max_update_norm=cap), 8)):
        bl = _batch(k, _LOG_LOSSES[k % len(_LOG_LOSSES)])
        eta = jnp.asarray(rate(jnp.asarray(k)) if callable(rate) else rate, jnp.float64)
        log_coef = jnp.log(eta) + bl.log_neg_dloss - bl.log_loss
        log_clip = jnp.minimum(0.0, jnp.asarray(log_u) - log_coef - jnp.log(bl.grad_norm))
        coef = jnp.exp(log_coef + log_clip)
        _assert_same_bits(step, {n: coef * g for n, g in bl.grad_alpha.items()})
        _assert_same_bits(log_dt, jnp.log(eta) + log_clip - (bl.log_loss + bl.log_batch_scale))
        # the meaning of the formula
        norm = np.sqrt(sum(np.sum(np.square(np.asarray(u))) for u in step.values()))
        uncapped = float(eta) * float(bl.grad_norm)  # |ℓ'| = Σ_B ℓ for the exponential loss
        np.testing.assert_allclose(norm, min(uncapped, cap or math.inf), rtol=1e-13)
        clipped.append(uncapped > (cap or math.inf))
        if float(bl.log_loss) > -700:
            for n, g in bl.grad_alpha.items():
                grad_l = -np.exp(float(bl.log_grad_scale)) * np.asarray(g)
                np.testing.assert_allclose(step[n], -np.exp(float(log_dt)) * grad_l, rtol=1e-13)
    if cap is not None:
        assert any(clipped) and not all(clipped)


@pytest.mark.usefixtures("f64")
@pytest.mark.parametrize("inner, rate", [(optax.sgd(0.05, momentum=0.9), 0.05), (optax.adam(0.05), _schedule)],
                         ids=["momentum", "adam, schedule for t"])
def test_timed_optax_is_the_optax_optimizer_bit_for_bit(inner, rate):
    """An optax optimizer runs unchanged inside Timed: fed ∇L̂ = −e^s ∇α̂, its updates equal those of
    the optimizer called directly (compiled without Timed, ∇L̂ formed inside as there) bit for bit,
    and ln Δt_k = ln η_k."""
    update = jax.jit(lambda bl, state, w: inner.update(bl.gradient(), state, w))
    state = inner.init(_params())
    for k, (w, step, log_dt) in enumerate(_run_transformation(timed(inner, rate), 6)):
        updates, state = update(_batch(k, _LOG_LOSSES[k % len(_LOG_LOSSES)]), state, w)
        _assert_same_bits(step, updates)
        eta = rate(jnp.asarray(k)) if callable(rate) else rate
        _assert_same_bits(log_dt, jnp.log(jnp.asarray(eta, jnp.float64)))


@pytest.mark.usefixtures("f64")
def test_timed_reads_the_rate_of_each_step_from_inject_hyperparams():
    """Without a rate, Δt_k is the learning rate an inject_hyperparams state holds after update k:
    η_k = schedule(k) (stored in float32 by optax here: rtol 1e-6)."""
    sched = optax.exponential_decay(0.5, 1, 0.5)  # η_k = 0.5^(k+1)
    got = _run_transformation(timed(optax.inject_hyperparams(optax.sgd)(learning_rate=sched)), 4)
    np.testing.assert_allclose([float(d) for *_, d in got], np.log(0.5 ** (np.arange(4) + 1.0)), rtol=1e-6)


def _closed_form_gd(w, eta, steps, batch_size=None, seed=0):
    """GD on L = Σ_i exp(−y_i⟨w, x_i⟩) in numpy: W ← W + η (n/b) Σ_{i∈B} e^(−y_i⟨w,x_i⟩) y_i x_i, with the
    batches B of simulate_descent (epoch e's permutation from fold_in(key(seed), e))."""
    out = [np.array(w)]
    for k in range(steps):
        if batch_size is None:
            idx = np.arange(N)
        else:
            per_epoch = N // batch_size
            e, j = divmod(k, per_epoch)
            perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(seed), np.uint32(e)), N))
            idx = perm[j * batch_size:(j + 1) * batch_size]
        q = np.exp(-Y[idx] * (X[idx] @ w))
        w = w + eta * (N / len(idx)) * (q * Y[idx]) @ X[idx]
        out.append(np.array(w))
    return np.array(out)


@pytest.mark.parametrize("batch_size", [None, 3], ids=["full batch", "batches of 3"])
def test_descent_iterates_match_a_numpy_loop(batch_size):
    """simulate_descent's iterates W_0..W_4 (saved at every iteration) against GD written out in numpy
    with the closed-form gradient of the exponential loss: equal to rounding (rtol 1e-13; the gradient is
    formed differently: autodiff of ln Σ e^(−p_i) against the sum above), t_k = kη."""
    eta = 0.05
    r = simulate_descent(_model(), (X, Y), "sgd", 4, learning_rate=eta, save_every=1, save_params=True, seed=7,
                         batch_size=batch_size)
    ref = _closed_form_gd(np.asarray(_model().w), eta, 4, batch_size, seed=7)
    np.testing.assert_allclose(r.params_flat, ref, rtol=1e-13, atol=0)
    np.testing.assert_allclose(r.t, eta * np.arange(5), rtol=1e-14)


def test_normalized_descent_iterates_match_a_numpy_loop():
    """Normalized GD with a cap u, exponential loss: W ← W + c_k η ∇α, ∇α = Σ_i q_i y_i x_i / Σ_i q_i,
    c_k = min(1, u/(η‖∇α‖)), Δt_k = c_k η / L(W_k): iterates and t against numpy to rounding."""
    eta, cap = 3.0, 3.0  # η‖∇α‖ = 2.5, 2.6, 3.7, 4.1: the last two steps are clipped
    r = simulate_descent(_model(), (X, Y), normalized_gd(eta, max_update_norm=cap), 4, save_every=1, save_params=True)
    w, ws, t, clips = np.asarray(_model().w), [np.asarray(_model().w)], [0.0], []
    for _ in range(4):
        q = np.exp(-Y * (X @ w))
        grad_alpha = (q * Y) @ X / q.sum()
        c = min(1.0, cap / (eta * np.linalg.norm(grad_alpha)))
        clips.append(c < 1)
        t.append(t[-1] + c * eta / q.sum())
        w = w + c * eta * grad_alpha
        ws.append(w)
    assert any(clips) and not all(clips)
    np.testing.assert_allclose(r.params_flat, np.array(ws), rtol=1e-13, atol=0)
    np.testing.assert_allclose(r.t, t, rtol=1e-13)
    assert r.config["optimizer"] == "normalized" and r.config["max_update_norm"] == cap


class _HalfStep(DescentStep):
    """A transformation written outside gradflow: W ← W − (η/2)∇L̂ from the plain gradient, Δt = η/2."""

    eta: float

    def init(self, params):
        return DescentState(jnp.zeros((), jnp.int64), jnp.asarray(-jnp.inf), optax.EmptyState())

    def update(self, updates, state, params=None, *, loss, **extra_args):
        lr = self.eta / 2
        step = jax.tree_util.tree_map(lambda g: -lr * g, updates)
        return step, DescentState(state.count + 1, jnp.log(jnp.asarray(lr)), state.inner)

    def config(self):
        return dict(optimizer="half", learning_rate=self.eta / 2, max_update_norm=None)


def test_any_descent_transformation_runs_in_the_loop():
    """The loop knows only init/update and the state's ln Δt: a DescentStep written here runs, and its
    run equals optax.sgd(η/2) (through Timed) bit for bit: iterates, t and the sharpness diagnostics."""
    mine = simulate_descent(_model(), (X, Y), _HalfStep(0.1), 40, num_save=NUM_SAVE)
    ref = simulate_descent(_model(), (X, Y), optax.sgd(0.05), 40, learning_rate=0.05, num_save=NUM_SAVE)
    assert set(mine.diagnostics) == set(ref.diagnostics) and "two_over_eta" in mine.diagnostics
    for k in ref.diagnostics:
        np.testing.assert_array_equal(mine.diagnostics[k], ref.diagnostics[k])
    np.testing.assert_array_equal(mine.params[".w"], ref.params[".w"])
    assert mine.config["optimizer"] == "half" and ref.config["optimizer"] == "optax"


def test_constant_rates_share_one_compilation(monkeypatch):
    """η (and normalized GD's cap) are traced: a second run at other constants reuses the compiled loop.
    Counted by the traces of the loop body (each calls ``evaluate``)."""
    traces = []
    real = descent_module.evaluate

    def counting(*args, **kwargs):
        traces.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(descent_module, "evaluate", counting)
    kw = dict(save_at=[0, 3, 6], diagnostics=gf.Diagnostics(sharpness=False))  # a shape no other test uses
    for make in (lambda c: gd(0.01 * c), lambda c: normalized_gd(0.1 * c, max_update_norm=c),
                 lambda c: NormalizedGD(0.1 * c)):
        simulate_descent(_model(), (X, Y), make(1.0), 6, **kw)
        first = len(traces)
        r = simulate_descent(_model(), (X, Y), make(2.0), 6, **kw)
        assert first > 0 and len(traces) == first, (first, len(traces))
        assert r.config["learning_rate"] in (0.02, 0.2)
        traces.clear()


@pytest.mark.filterwarnings("ignore:simulate_descent runs in float32")
def test_normalized_gd_in_float32():
    """float32 runs of normalized GD stay float32 (‖∇α̂‖, computed in float64, used to turn W into
    float64 inside the loop) and follow the float64 run to float32 rounding."""
    opt = normalized_gd(0.7, max_update_norm=0.2)
    lo = simulate_descent(_model(), (X, Y), opt, 20, num_save=NUM_SAVE, dtype="float32")
    hi = simulate_descent(_model(), (X, Y), opt, 20, num_save=NUM_SAVE)
    assert lo.params[".w"].dtype == np.float32 and lo.status == "completed"
    np.testing.assert_allclose(lo.params[".w"], hi.params[".w"], rtol=1e-5)
    np.testing.assert_allclose(lo.log_t, hi.log_t, rtol=1e-5)
