"""Kink-aware step control (issue 12): the controller's decisions, the detection rule, and accuracy
against tight references on a fixed activation pattern and on a ReLU net from a random start."""

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.controllers import KinkPIDController, finite_rms_norm
from gradflow.figures import make_margin_model
from gradflow.kinkmap import field_kinks, nonsmooth_primitives
from gradflow.params import combine, partition


def _decide(controller, scaled_error):
    """One adapt_step_size call on a 4-vector whose scaled error norm is ``scaled_error``."""
    y0 = jnp.ones(4)
    err = jnp.full(4, scaled_error * (controller.atol + controller.rtol))
    state = (jnp.asarray(1.0), jnp.asarray(1.0), False)
    return controller.adapt_step_size(0.0, 0.1, y0, y0, None, err, 3, state)


@pytest.mark.parametrize("scaled", [0.01, 0.5, 0.99])
def test_kink_controller_is_pid_below_one(scaled):
    with gf.x64():
        pid = diffrax.PIDController(rtol=1e-6, atol=1e-9, norm=finite_rms_norm)
        kink = KinkPIDController(rtol=1e-6, atol=1e-9, norm=finite_rms_norm, accept=10.0)
        a, b = _decide(pid, scaled), _decide(kink, scaled)
    assert bool(a[0]) and bool(b[0])
    np.testing.assert_allclose([float(a[1]), float(a[2])], [float(b[1]), float(b[2])], rtol=1e-14)


def test_kink_controller_accepts_below_accept_and_shrinks():
    with gf.x64():
        pid = diffrax.PIDController(rtol=1e-6, atol=1e-9, norm=finite_rms_norm)
        kink = KinkPIDController(rtol=1e-6, atol=1e-9, norm=finite_rms_norm, accept=10.0)
        keep_p, t0_p, t1_p, *_ = _decide(pid, 5.0)
        keep_k, t0_k, t1_k, _, state, _ = _decide(kink, 5.0)
        keep_r, t0_r, *_ = _decide(kink, 20.0)
    assert not bool(keep_p) and float(t0_p) == 0.0  # diffrax rejects and retries from t0
    assert bool(keep_k) and float(t0_k) == pytest.approx(0.1)  # kept: the next step starts at t1
    # the next step has diffrax's shrunk retry size 0.1·0.9·5^(-1/3)
    assert float(t1_k - t0_k) == pytest.approx(float(t1_p - t0_p), rel=1e-12)
    assert float(t1_k - t0_k) == pytest.approx(0.1 * 0.9 * 5.0 ** (-1 / 3), rel=1e-12)
    assert float(state[0]) == pytest.approx(0.2)  # the controller's memory holds 1/error of the kept step
    assert not bool(keep_r) and float(t0_r) == 0.0  # above `accept`: rejected as in diffrax


def test_nonsmooth_primitives_tell_relu_from_linear():
    key = jax.random.PRNGKey(0)
    with gf.x64():
        cases = [
            (gf.Linear(3, key=key), jnp.ones((2, 3)), []),
            (gf.DeepLinear(3, (3, 4, 4), key=key), jnp.ones((2, 3)), []),
            (gf.ReLUMLP((3, 4, 1), key=key), jnp.ones((2, 3)), ["max"]),
            (make_margin_model("hcnn", (1, 8, 8)), jnp.ones((2, 1, 8, 8)), ["max", "reduce_window_max"]),
        ]
        for model, x, expected in cases:
            params, static = partition(model)
            assert nonsmooth_primitives(lambda p, x_, s=static: combine(p, s)(x_), params, x) == expected


def _relu_problem(positive: bool):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 3))
    if positive:
        x = np.abs(x) + 0.5
    y = np.where(x[:, 0] + 0.3 * x[:, 1] > (1.0 if positive else 0.0), 1.0, -1.0)
    model = gf.ReLUMLP((3, 6, 1), key=jax.random.PRNGKey(1))
    if positive:  # every pre-activation stays far above zero over the run: a fixed pattern
        with gf.x64():
            model = jax.tree_util.tree_map(lambda a: jnp.abs(a) + 1.0 if eqx.is_inexact_array(a) else a, model)
    return model, (x, y)


def _final_w(result):
    return result.diagnostics["params_flat"][-1]


@pytest.mark.slow  # a Tsit5 reference at rtol 1e-12 (~50 s on 2 cores)
def test_fixed_pattern_same_accuracy_as_pid():
    model, data = _relu_problem(positive=True)
    T = 0.2
    kw = dict(loss="logistic", save_at=np.array([0.0, T]), save_params=True, sliding=False)  # a fixed pattern: nothing slides
    ref = _final_w(gf.simulate_flow(model, data, T, solver="tsit5", rtol=1e-12, atol=1e-14, step_control="pid", **kw))
    err = {}
    for control in ("pid", "kink"):
        r = gf.simulate_flow(model, data, T, solver="bosh3", rtol=1e-6, atol=1e-9, step_control=control, **kw)
        err[control] = np.linalg.norm(_final_w(r) - ref) / np.linalg.norm(ref)
        for m in (model, r.model):  # the activation pattern is fixed: every pre-activation far above 0
            assert float(jnp.min(jnp.asarray(data[0]) @ m.layers[0].T)) > 1.0
    assert err["pid"] < 1e-5
    assert err["kink"] < 2.0 * err["pid"], err


@pytest.mark.slow  # a tight Tsit5 reference through 32 × 60 kinks (~80 s on 2 cores)
def test_relu_random_start_default_matches_tight_reference():
    # kink-dense: 60 examples × 32 ReLU units from a random start (Tsit5 + PID rejects ~1/3 of its steps)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 3))
    y = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, 1.0, -1.0)
    model = gf.ReLUMLP((3, 32, 1), key=jax.random.PRNGKey(1))
    T = 0.5
    kw = dict(loss="logistic", save_at=np.array([0.0, T]), save_params=True, max_steps=1_000_000)
    # measured: within 3.3e-6 of Dopri5 at rtol 1e-8 for the rtol-1e-8 Tsit5 run; 1e-7 is within ~1e-5
    ref = _final_w(gf.simulate_flow(model, (x, y), T, solver="tsit5", rtol=1e-7, atol=1e-10, step_control="pid", **kw))
    rtol = 1e-4
    r = gf.simulate_flow(model, (x, y), T, rtol=rtol, atol=1e-3 * rtol, **kw)
    assert r.config["solver"] == "bosh3" and r.config["step_control"] == "kink"
    assert r.config["nonsmooth_primitives"] == ["max"]
    err = np.linalg.norm(_final_w(r) - ref) / np.linalg.norm(ref)
    assert err < 5 * rtol, err  # measured 1.8e-4
    assert r.stats["rejected_steps"] <= 0.15 * r.stats["steps"]


def _abs_net(p, x):
    return jnp.abs(x @ p["a"]) @ p["v"]


def _pool_net(p, x):  # x: (n, 4) → a window-2 max-pool of a linear map, then a linear read-out
    h = jax.lax.reduce_window(x @ p["a"], -jnp.inf, jax.lax.max, (1, 2), (1, 2), "VALID")
    return h @ p["v"]


@pytest.fixture(scope="module")
def rule_cases():
    """The four kinds of issue 19's kink rule, with what ∇L does across their kinks."""
    key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    with gf.x64():
        p_abs = {"a": jnp.asarray(rng.normal(size=(3, 4))), "v": jnp.asarray(rng.normal(size=4))}
        p_pool = {"a": jnp.asarray(rng.normal(size=(3, 4))), "v": jnp.asarray(rng.normal(size=2))}
        return {
            # relu(z)² is C¹: its output reaches the loss only squared, so ∇L is continuous
            "squared_relu": (gf.TwoLayerSquaredReLU(3, 8, key=key), False, (0, 1)),
            "relu": (gf.ReLUMLP((3, 4, 1), key=key), True, (1, 0)),
            "max_pool": (gf.as_model(_pool_net, p_pool, degree=1, batched=True), True, (0, 0)),
            "abs": (gf.as_model(_abs_net, p_abs, degree=2, batched=True), True, (1, 0)),  # |x| = max(x, −x)
        }


@pytest.mark.parametrize("kind", ["squared_relu", "relu", "max_pool", "abs"])
def test_kink_rule_looks_at_the_field(rule_cases, kind):
    """Kink control only where ∇L jumps: a C⁰ max site (ReLU, abs), a max-pool. The squared ReLU's
    max site is C¹ and its flow gets the smooth default (Tsit5 + PID). Sites counted as (C⁰, C¹)."""
    model, jumps, (c0, c1) = rule_cases[kind]
    with gf.x64():
        params, static = partition(gf.interop.wrap(model))
        kinks = field_kinks(params, static, jnp.ones((2, 3)))
    assert kinks.jumps is jumps
    assert (len(kinks.sites.sliding), len(kinks.sites.sites) - len(kinks.sites.sliding)) == (c0, c1)


@pytest.mark.parametrize("kind", ["squared_relu", "abs"])
def test_kink_rule_picks_the_default_solver(rule_cases, kind):
    model, jumps, _ = rule_cases[kind]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3))
    y = np.where(x[:, 0] > 0, 1.0, -1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = gf.simulate_flow(model, (x, y), 0.05, num_save=2, diagnostics=gf.Diagnostics(sharpness=False))
    assert r.status == "completed", r.reason
    assert (r.config["solver"], r.config["step_control"]) == (("bosh3", "kink") if jumps else ("tsit5", "pid"))
    # abs slides like a ReLU (|x| = max(x, −x)); the squared ReLU's site is C¹ and never slides
    assert r.config["sliding"] is jumps


def _twice(p, x):  # the ReLU of h, then the ReLU of [h, g] again: h's pre-activations pass through two ReLUs
    h, g = x @ p["a"], x @ p["b"]
    return jnp.concatenate([jax.nn.relu(h), jax.nn.relu(jnp.concatenate([h, g], axis=1))], axis=1) @ p["v"]


def _once(p, x):  # the same function with every pre-activation through one ReLU
    h, g = x @ p["a"], x @ p["b"]
    r = jax.nn.relu(h)
    return jnp.concatenate([r, jnp.concatenate([r, jax.nn.relu(g)], axis=1)], axis=1) @ p["v"]


def _reshaped(p, x):  # the ReLU of h and of a reshape of h: the same elements
    h = x @ p["a"]
    return jax.nn.relu(h) @ p["v"][:4] + jax.nn.relu(h.reshape(-1, 2, 2)).sum(axis=(1, 2))


def test_relus_that_read_the_same_pre_activations_are_found_and_warned():
    """Kinks.shared: C⁰ sites whose operands hold the same array elements (whole, concatenated or
    reshaped); the sliding set up warns, naming them. The function is the same either way (checked)."""
    from gradflow.clock import get_clock
    from gradflow.flow.integration import Request, choose_integration

    rng = np.random.default_rng(0)
    with gf.x64():
        p = {"a": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=(3, 2))),
             "v": jnp.asarray(rng.normal(size=10))}
        x = jnp.asarray(rng.normal(size=(5, 3)))
        np.testing.assert_array_equal(_twice(p, x), _once(p, x))
        found = {}
        for name, fn in (("twice", _twice), ("once", _once), ("reshaped", _reshaped)):
            params, static = partition(gf.interop.wrap(gf.as_model(fn, p, batched=True)))
            found[name] = field_kinks(params, static, x)
    assert found["twice"].sites.shared == ((1, 0),)
    assert found["once"].sites.shared == ()
    assert found["reshaped"].sites.shared == ((1, 0),)
    assert found["twice"].sites.pairs == 5 * (4 + 6) and found["once"].sites.pairs == 5 * (4 + 2)
    with pytest.warns(UserWarning, match=r"site 1 \(5, 6\) repeats site 0 \(5, 4\)"):
        choose_integration(found["twice"], get_clock("time"), Request(), 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choose_integration(found["once"], get_clock("time"), Request(), 10)
        choose_integration(found["twice"], get_clock("time"), Request(sliding=False), 10)


def test_relus_of_different_arrays_and_maxout_are_not_repeats():
    """No false alarm: ReLUs with the constant 0 in common (jnp.maximum(0, ·) broadcasts it) and two
    maxouts sharing one operand (z = h − g and h − u differ) share no pair; max(h, g) twice does."""
    def zeros_first(p, x):
        h, g = x @ p["a"], x @ p["b"]
        return jnp.concatenate([jnp.maximum(0.0, h), jnp.maximum(0.0, g)], axis=1) @ p["v"][:6]

    def maxouts(p, x):
        h, g, u = x @ p["a"][:, :2], x @ p["b"], x @ p["a"][:, 2:]
        return jnp.concatenate([jnp.maximum(h, g), jnp.maximum(h, u)], axis=1) @ p["v"][:4]

    def same_maxout(p, x):
        h, g = x @ p["a"][:, :2], x @ p["b"]
        return jnp.concatenate([jnp.maximum(h, g), jnp.maximum(g, h)], axis=1) @ p["v"][:4]

    rng = np.random.default_rng(1)
    with gf.x64():
        p = {"a": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=(3, 2))),
             "v": jnp.asarray(rng.normal(size=10))}
        x = jnp.asarray(rng.normal(size=(5, 3)))
        shared = {}
        for fn in (zeros_first, maxouts, same_maxout):
            params, static = partition(gf.interop.wrap(gf.as_model(fn, p, batched=True)))
            kinks = field_kinks(params, static, x).sites
            assert len(kinks.sliding) == 2, fn.__name__
            shared[fn.__name__] = kinks.shared
    assert shared == {"zeros_first": (), "maxouts": (), "same_maxout": ((1, 0),)}
