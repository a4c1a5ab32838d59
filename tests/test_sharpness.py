"""Sharpness λ_max(∇²L): power iteration against closed forms and dense Hessians, along flows and GD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gradflow as gf
from gradflow.params import combine, partition
from gradflow.sharpness import bottom_eigenpair, initial_vector, power_iteration, power_step, sharpness, top_eigenpair


def _sym(eigs, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T


@pytest.mark.parametrize("eigs", [[3.0, 1.0, 0.5, -1.0, 2.0, 0.1], [3.0, -5.0, 1.0, 0.5, -1.0, 2.0], [-1.0, -2.0, -4.0, -0.5]])
def test_quadratic_top_and_bottom(eigs):
    """½wᵀAw has Hessian A: λ_max (the largest, not the largest in magnitude) and λ_min of A."""
    with gf.x64():
        a = jnp.asarray(_sym(eigs))
        hvp = jax.jit(lambda v: jax.jvp(jax.grad(lambda w: 0.5 * w @ a @ w), (jnp.zeros(len(eigs)),), (v,))[1])
        top = top_eigenpair(hvp, jnp.ones(len(eigs)), tol=1e-10, max_iters=5000)
        low = bottom_eigenpair(hvp, jnp.ones(len(eigs)), top.value, tol=1e-10, max_iters=5000)
        np.testing.assert_allclose(float(top.value), max(eigs), rtol=1e-9)
        np.testing.assert_allclose(float(low.value), min(eigs), rtol=1e-9)


def _nonsymmetric(eigs, seed=1):
    """S diag(eigs) S⁻¹: real eigenvalues, not symmetric (like the Jacobian of the accuracy clock's field)."""
    sm = np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))) + 2 * np.eye(len(eigs))
    return sm @ np.diag(eigs) @ np.linalg.inv(sm)


def test_power_iteration_fixed_steps_against_numpy():
    """tol=None: exactly max_iters steps v ← Av/‖Av‖ from the unnormalized start cos(1.3 i) + 0.5, and
    gain = ‖Av‖/‖v‖ at the last step: the |λ| estimate of the flow's stiffness check, for a
    non-symmetric A too. Against the same loop in numpy (rtol 1e-13); converges to the largest |λ|
    (3, of a negative eigenvalue: (2/3)^200 ≈ 1e-35 left); 0 steps: gain 0."""
    eigs = [-3.0, 2.0, 1.0, 0.5, 0.2]
    a_np = _nonsymmetric(eigs)
    with gf.x64():
        a = jnp.asarray(a_np)
        v0 = initial_vector(len(eigs), unit=False)
        np.testing.assert_array_equal(v0, np.cos(np.arange(5) * 1.3) + 0.5)
        np.testing.assert_allclose(initial_vector(len(eigs)), v0 / np.linalg.norm(v0), rtol=1e-15)
        matvec = jax.jit(lambda v: a @ v)
        for iters in (1, 7, 30):
            p = power_iteration(matvec, v0, tol=None, max_iters=iters)
            v = np.asarray(v0)
            for _ in range(iters):
                w = a_np @ v
                gain, last, v = np.linalg.norm(w) / np.linalg.norm(v), v, w / np.linalg.norm(w)
            assert int(p.steps) == iters
            np.testing.assert_allclose(float(p.gain), gain, rtol=1e-13)
            np.testing.assert_allclose(np.asarray(p.vector), last, rtol=1e-12)
        np.testing.assert_allclose(float(power_iteration(matvec, v0, tol=None, max_iters=200).gain), 3.0, rtol=1e-10)
        none = power_iteration(matvec, v0, tol=None, max_iters=0)
        assert int(none.steps) == 0 and float(none.gain) == 0.0


def test_residual_stop_and_fixed_steps_are_one_iteration():
    """The residual test only decides when to stop: the i steps it takes equal i fixed steps bit for
    bit, and its residual r ≤ tol·|ρ| certifies ρ (symmetric A: |ρ − λ_max| ≤ r)."""
    with gf.x64():
        a = jnp.asarray(_sym([4.0, 1.0, 0.5, -1.0, 2.0, 0.1]))
        v0 = initial_vector(6)
        stopped = power_iteration(lambda v: a @ v, v0, tol=1e-6, max_iters=500)
        i = int(stopped.steps)
        assert 1 < i < 500 and float(stopped.residual) <= 1e-6 * abs(float(stopped.value))
        fixed = power_iteration(lambda v: a @ v, v0, tol=None, max_iters=i)
        for name in ("value", "vector", "residual", "gain"):
            np.testing.assert_array_equal(getattr(stopped, name), getattr(fixed, name))
        assert abs(float(stopped.value) - 4.0) <= float(stopped.residual)
        assert int(power_iteration(lambda v: a @ v, v0, tol=None, max_iters=i - 1).steps) == i - 1


def test_power_step():
    """One step: ρ = vᵀAv, r = ‖Av − ρv‖, gain ‖Av‖/‖v‖, next Av/‖Av‖; where Av = 0, next = v, gain 0."""
    with gf.x64():
        a = _sym([3.0, 1.0, -2.0])
        v = np.array([0.6, 0.0, 0.8])
        s = power_step(lambda u: jnp.asarray(a) @ u, jnp.asarray(v))
        w = a @ v
        np.testing.assert_allclose([float(s.value), float(s.residual), float(s.gain)],
                                   [v @ w, np.linalg.norm(w - (v @ w) * v), np.linalg.norm(w)], rtol=1e-14)
        np.testing.assert_allclose(s.next, w / np.linalg.norm(w), rtol=1e-14)
        zero = power_step(lambda u: 0.0 * u, jnp.asarray(v))
        np.testing.assert_array_equal(zero.next, v)
        assert float(zero.gain) == 0.0 and float(zero.value) == 0.0


@pytest.fixture(scope="module")
def iris_mlp():
    x, y = gf.datasets.iris_binary()
    return gf.ReLUMLP((x.shape[1], 6, 1), key=jax.random.PRNGKey(3)), x, y


def _dense_eigs(model, x, y, loss_name):
    """Eigenvalues of jax.hessian of L = Σ_i ℓ(q_i), formed directly (no log-space trick)."""
    loss = gf.get_loss(loss_name)
    with gf.x64():
        p, static = partition(model)
        flat, unravel = ravel_pytree(p)

        def total(f):
            return jnp.sum(jnp.exp(loss.log_ell(loss.soft_margins(combine(unravel(f), static)(jnp.asarray(x)), jnp.asarray(y)))))

        return np.linalg.eigvalsh(np.asarray(jax.hessian(total)(flat)))


@pytest.mark.parametrize("loss_name", ["exponential", "logistic"])
def test_small_net_matches_dense_hessian(iris_mlp, loss_name):
    model, x, y = iris_mlp
    eigs = _dense_eigs(model, x, y, loss_name)
    with gf.x64():
        p, static = partition(model)
        sh = sharpness(p, static, jnp.asarray(x), jnp.asarray(y), gf.get_loss(loss_name), tol=1e-8, max_iters=5000,
                       negative=True)
    np.testing.assert_allclose(float(sh.sharpness), eigs[-1], rtol=1e-6)
    # λ_min converges slowly (ratio (λ_max − λ₂')/(λ_max − λ_min) near 1): a Rayleigh quotient, never below it
    assert eigs[0] - 1e-9 * eigs[-1] <= float(sh.min_eigenvalue) <= eigs[0] + 1e-3 * abs(eigs[0])
    np.testing.assert_allclose(float(sh.log_sharpness), np.log(eigs[-1]), atol=1e-6)


def test_log_sharpness_where_the_loss_underflows():
    """Linear model, exponential loss, scaled so that ln L ≈ −2000: ∇²L = Σ e^(−p_i) x_i x_iᵀ underflows,
    ln λ_max stays finite and equals ln L + ln λ_max(∇²L/L) computed in closed form."""
    x = np.array([[1.0, 0.3], [0.8, -0.2], [1.2, 0.5]])
    y = np.ones(3)
    w = np.array([1.0, 0.2])
    with gf.x64():
        model = gf.Linear(2, key=jax.random.PRNGKey(0))
        import equinox as eqx

        for scale, underflows in ((1.0, False), (2000.0, True)):
            m = eqx.tree_at(lambda m: m.w, model, jnp.asarray(scale * w))
            p, static = partition(m)
            sh = sharpness(p, static, jnp.asarray(x), jnp.asarray(y), gf.get_loss("exponential"), tol=1e-10, max_iters=2000)
            logs = -(x @ (scale * w))  # ln e^(−p_i)
            log_l = np.logaddexp.reduce(logs)
            weights = np.exp(logs - log_l)  # Hessian / L = Σ (e^(−p_i)/L) x_i x_iᵀ
            mu = np.linalg.eigvalsh((x * weights[:, None]).T @ x)[-1]
            np.testing.assert_allclose(float(sh.log_sharpness), log_l + np.log(mu), rtol=1e-10)
            if underflows:
                assert float(sh.sharpness) == 0.0 and log_l < -1000
            else:
                np.testing.assert_allclose(float(sh.sharpness), np.exp(log_l) * mu, rtol=1e-9)


@pytest.fixture(scope="module")
def iris_flows(iris_mlp, tmp_path_factory):
    model, x, y = iris_mlp
    # sliding=False: the sharpness is checked at the saved W, whichever field moved it (the sliding solve only
    # adds compile time here; the default flow with sliding is tested in test_sliding)
    kw = dict(rtol=1e-6, atol=1e-9, num_save=8, save_params=True, sliding=False)
    where = tmp_path_factory.mktemp("sharpness")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on = gf.simulate_flow(model, (x, y), 2.0, diagnostics=gf.Diagnostics(sharpness=True, min_eigenvalue=True),
                              run=gf.RunOptions(checkpoint=str(where / "on"), checkpoint_every=3), **kw)
        off = gf.simulate_flow(model, (x, y), 2.0, diagnostics=gf.Diagnostics(sharpness=False),
                               run=gf.RunOptions(checkpoint=str(where / "off"), checkpoint_every=3), **kw)
    return on, off


def test_flow_sharpness_matches_dense_hessian_at_save_points(iris_mlp, iris_flows):
    """The in-solve, warm-started value at every save point = top eigenvalue of the dense Hessian there
    (tol 1e-3 on the residual gives the eigenvalue to ~1e-6 relative on this spectrum)."""
    model, x, y = iris_mlp
    on, _ = iris_flows
    assert on.config["sharpness"] and on.stats["segments"] >= 3  # warm start carried across segments
    for i in range(len(on)):
        with gf.x64():
            p, static = partition(model)
            m = combine(ravel_pytree(p)[1](jnp.asarray(on.params_flat[i])), static)
        eigs = _dense_eigs(m, x, y, "exponential")
        np.testing.assert_allclose(on.sharpness[i], eigs[-1], rtol=1e-5, err_msg=f"save point {i}")
        assert on.min_eigenvalue[i] >= eigs[0] - 1e-6 * eigs[-1]  # a Rayleigh quotient: never below λ_min
    assert on.stats["sharpness_hvps"] == int(on.sharpness_hvps.sum()) > 0


def test_turning_sharpness_off_changes_nothing_else(iris_flows):
    on, off = iris_flows
    extra = {"sharpness", "log_sharpness", "sharpness_hvps", "min_eigenvalue"}
    assert set(on.diagnostics) - set(off.diagnostics) == extra
    for k, v in off.diagnostics.items():
        np.testing.assert_array_equal(on.diagnostics[k], v, err_msg=k)
    assert {k: on.stats[k] for k in off.stats if k != "wall_time"} == {k: v for k, v in off.stats.items() if k != "wall_time"}


@pytest.fixture(scope="module")
def iris_defaults(iris_mlp, tmp_path_factory):
    """The same flow as ``iris_flows`` with the default diagnostics, and with activation patterns off."""
    model, x, y = iris_mlp
    kw = dict(rtol=1e-6, atol=1e-9, num_save=8, save_params=True, sliding=False)  # as iris_flows
    where = tmp_path_factory.mktemp("sharpness_defaults")
    import warnings

    def run(name):
        return gf.RunOptions(checkpoint=str(where / name), checkpoint_every=3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        default = gf.simulate_flow(model, (x, y), 2.0, run=run("default"), **kw)
        no_patterns = gf.simulate_flow(model, (x, y), 2.0, diagnostics=gf.Diagnostics(activation_patterns=False),
                                       run=run("np"), **kw)
    return default, no_patterns


def test_default_sharpness_matches_dense_hessian_where_it_is_taken(iris_mlp, iris_flows, iris_defaults):
    """The default (5 % budget) takes the last save point of every segment reached and some others;
    where it reports a value, that value is within its stated accuracy (tol = 1e-3 relative) of
    the dense Hessian's top eigenvalue, with fewer HVPs than sharpness=True."""
    model, x, y = iris_mlp
    on, _ = iris_flows
    default, _ = iris_defaults
    taken = np.isfinite(default.sharpness)
    assert taken[-1] and 2 <= taken.sum() < len(taken), taken
    assert np.all(np.isnan(default.log_sharpness[~taken]))
    assert 0 < default.stats["sharpness_hvps"] < on.stats["sharpness_hvps"]
    for i in np.flatnonzero(taken):
        with gf.x64():
            p, static = partition(model)
            m = combine(ravel_pytree(p)[1](jnp.asarray(default.params_flat[i])), static)
        eigs = _dense_eigs(m, x, y, "exponential")
        np.testing.assert_allclose(default.sharpness[i], eigs[-1], rtol=1e-3, err_msg=f"save point {i}")


def test_switching_a_default_diagnostic_off_changes_nothing_else(iris_flows, iris_defaults):
    """Default run vs sharpness=False and vs activation_patterns=False: every other diagnostic and
    every solver statistic is bit-for-bit the same (the diagnostics run after the solve)."""
    _, off = iris_flows
    default, no_patterns = iris_defaults
    sharp = {"sharpness", "log_sharpness", "sharpness_hvps"}
    patterns = set(default.diagnostics) - set(no_patterns.diagnostics)
    assert set(default.diagnostics) - set(off.diagnostics) == sharp
    assert patterns and not patterns & sharp
    for other, dropped in ((off, sharp), (no_patterns, patterns)):
        assert set(other.diagnostics) == set(default.diagnostics) - dropped
        for k, v in other.diagnostics.items():
            np.testing.assert_array_equal(default.diagnostics[k], v, err_msg=k)
        ignore = {"wall_time", "sharpness_hvps"}
        assert {k: v for k, v in other.stats.items() if k not in ignore} == {
            k: v for k, v in default.stats.items() if k not in ignore}


@pytest.mark.slow  # compiles the CNN solve with the sharpness (~50 s on 2 cores)
def test_cnn_flow_from_random_start():
    x, y = gf.datasets.digits(n=20, seed=0)
    model = gf.figures.make_margin_model("hcnn", x.shape[1:], seed=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = gf.simulate_flow(model, (x, y), 2e-3, loss="cross_entropy", solver="bosh3", rtol=1e-4, atol=1e-7, num_save=6,
                             sliding=False)  # 9 steps from the start: nothing slides yet
    assert r.ok and r.config["sharpness"]  # on by default: 1,252 parameters ≤ 20,000
    # a 9-step run: its budget buys no point, and the last one reached is taken all the same
    taken = np.isfinite(r.sharpness)
    assert taken[-1] and np.all(r.sharpness[taken] > 0)
    np.testing.assert_allclose(np.log(r.sharpness[taken]), r.log_sharpness[taken], rtol=1e-12)


# ---- gradient descent: the edge of stability ----

# Not separable: L = 2cosh(w₁) + 2cosh(2w₂), minimum at 0 where ∇²L = diag(2, 8): GD converges, its
# sharpness falls towards 8, and a growing step crosses 2/η at a predictable iteration.
_X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
_Y = np.array([1.0, -1.0, 1.0, -1.0])


def _linear():
    import equinox as eqx

    with gf.x64():
        return eqx.tree_at(lambda m: m.w, gf.Linear(2, key=jax.random.PRNGKey(0)), jnp.asarray([0.2, 0.1]))


def _dense_sharpness(w):
    """λ_max of ∇²L = Σ e^(−y_i⟨x_i,w⟩) x_i x_iᵀ (exponential loss) at each row of w, closed form."""
    return np.array([np.linalg.eigvalsh((_X * np.exp(-_Y * (_X @ wi))[:, None]).T @ _X)[-1] for wi in w])


@pytest.fixture(scope="module")
def lam0():
    return float(_dense_sharpness(np.array([[0.2, 0.1]]))[0])


@pytest.mark.parametrize("factor, expected", [(1.01, 0), (0.99, None)])
def test_edge_flag_constant_step(lam0, factor, expected):
    """η just above 2/λ_max(W_0): past the edge at iteration 0; just below: never (the sharpness falls
    towards its value 8 at the minimum, checked on the iterates)."""
    eta = factor * 2.0 / lam0
    r = gf.simulate_descent(_linear(), (_X, _Y), "gd", 60, learning_rate=eta, save_every=1, save_params=True,
                            diagnostics=gf.Diagnostics(sharpness_tol=1e-7))
    lam = _dense_sharpness(r.params_flat)
    np.testing.assert_allclose(r.sharpness, lam, rtol=1e-6)
    np.testing.assert_allclose(r.two_over_eta, 2.0 / eta, rtol=1e-12)
    assert r.edge_step == expected
    if expected is None:
        assert np.all(lam[:-1] < 2.0 / eta)


def test_edge_flag_per_iteration_with_a_growing_step(lam0):
    """η_k = 0.1·(2/λ_0)·1.1^k: the first k with λ_max(W_k) > 2/η_k, computed from the dense Hessian at
    every iterate, is found by the per-iteration check although only 3 iterations are saved."""
    base = 0.1 * 2.0 / lam0

    def schedule(k):
        return base * 1.1**k

    steps = 32
    dense = gf.simulate_descent(_linear(), (_X, _Y), "gd", steps, learning_rate=schedule, save_every=1, save_params=True,
                                diagnostics=gf.Diagnostics(sharpness=False))
    lam = _dense_sharpness(dense.params_flat)
    eta = base * 1.1 ** np.arange(steps + 1)
    crossed = np.flatnonzero(lam[:-1] > 2.0 / eta[:-1])
    assert 0 < crossed[0] < steps - 1
    sparse = gf.simulate_descent(_linear(), (_X, _Y), "gd", steps, learning_rate=schedule, save_at=[0, steps // 2, steps])
    assert sparse.stats["edge_resolution"] == "every iteration"
    assert sparse.edge_step == int(crossed[0])
    np.testing.assert_array_equal(sparse.params[".w"], dense.params[".w"])  # tracking does not change the iterates


def test_compare_reports_distance_at_the_edge_and_at_the_end(lam0):
    """b: GD with a growing step that crosses the edge; a: GD with a small constant step saved at every
    iteration. compare's ``edge`` row = ‖W_a(t_e) − W_b(t_e)‖ at b's edge time t_e (a interpolated
    linearly, b saved exactly there); ``end`` the same at the last common time."""
    base = 0.1 * 2.0 / lam0

    def schedule(k):
        return base * 1.1**k

    first = gf.simulate_descent(_linear(), (_X, _Y), "gd", 32, learning_rate=schedule, save_at=[0, 32])
    k_e = first.edge_step
    b = gf.simulate_descent(_linear(), (_X, _Y), "gd", 32, learning_rate=schedule, save_at=[0, k_e, 32], save_params=True)
    eta_a = base / 8
    a = gf.simulate_descent(_linear(), (_X, _Y), "gd", int(b.t[-1] / eta_a) + 2, learning_rate=eta_a, save_every=1,
                            save_params=True, diagnostics=gf.Diagnostics(sharpness=False))
    out = gf.compare(a, b)
    t_e = b.stats["edge_t"]
    np.testing.assert_allclose(t_e, base * (1.1**k_e - 1) / 0.1, rtol=1e-12)  # Σ_{j<k_e} η_j
    for row, t, wb in ((out["edge"], t_e, b.params_flat[1]), (out["end"], b.t[-1], b.params_flat[2])):
        wa = np.array([np.interp(t, a.t, a.params_flat[:, j]) for j in range(2)])
        np.testing.assert_allclose(row["t"], t, rtol=1e-12)
        np.testing.assert_allclose(row["param_distance"], np.linalg.norm(wa - wb), rtol=1e-9)
        cos = wa @ wb / np.linalg.norm(wa) / np.linalg.norm(wb)
        np.testing.assert_allclose(row["angle"], np.arccos(min(cos, 1.0)), rtol=1e-6, atol=1e-9)
    assert out["edge"]["param_distance"] > 0


def test_plot_flow_draws_sharpness_and_two_over_eta(lam0, tmp_path):
    r = gf.simulate_descent(_linear(), (_X, _Y), "gd", 20, learning_rate=1.01 * 2.0 / lam0, save_every=2)
    fig = gf.plot_flow(r, tmp_path / "gd.png")
    ax = fig.axes[3]  # first row, fourth column: against ln(n/L)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_allclose(lines["λ_max(∇²L)"].get_ydata(), r.sharpness, rtol=1e-12)
    np.testing.assert_allclose(lines["2/η"].get_ydata(), r.two_over_eta, rtol=1e-12)
    assert (tmp_path / "gd.png").stat().st_size > 0


def test_plot_flow_draws_one_normalized_sharpness_panel(iris_defaults, tmp_path):
    """A flow's plot: one sharpness panel, λ_max(∇²L)/L at the save points that have a value,
    against ln(n/L); no panel against t."""
    default, _ = iris_defaults
    fig = gf.plot_flow(default, tmp_path / "flow.png")
    d = default.diagnostics
    have = np.isfinite(d["log_sharpness"])
    (line,) = [ln for ax in fig.axes for ln in ax.get_lines() if "λ_max" in ln.get_label()]
    assert line.get_label() == "λ_max(∇²L)/L" and line.axes is fig.axes[3]
    np.testing.assert_allclose(line.get_xdata(), d["accuracy"][have], rtol=1e-12)
    np.testing.assert_allclose(line.get_ydata(), default.sharpness[have] / np.exp(d["log_loss"][have]), rtol=1e-9)
    assert all(ax.get_xlabel() != "t" for ax in fig.axes)
    assert (tmp_path / "flow.png").stat().st_size > 0
