"""Tests for gradflow.descent (simulate_descent, normalized GD) and gradflow.compare.

Sizes are tiny and the options repeat across tests (same shapes, same number of save points) so the
compiled loops are shared: most calls below hit the jit cache of an earlier one.
"""

from __future__ import annotations

import inspect
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradflow.compare import compare
from gradflow.descent import normalized_gd, simulate_descent
from gradflow.errors import InvalidArgumentError, InvalidTypeError
from gradflow.flow import simulate_flow
from gradflow.models import Linear
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
