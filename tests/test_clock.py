"""The two clocks (gradflow.clock): their maps against closed forms, and the same flow through both."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.clock import AccuracyClock, TimeClock, get_clock


def test_get_clock_and_its_errors():
    assert isinstance(get_clock("time"), TimeClock) and isinstance(get_clock("accuracy"), AccuracyClock)
    clock = AccuracyClock()
    assert get_clock(clock) is clock
    with pytest.raises(gf.InvalidArgumentError, match="clock: unknown value 'Time'"):
        get_clock("Time")
    with pytest.raises(gf.InvalidArgumentError, match="t_max: is required"):
        TimeClock().check_range(None, 5.0)
    with pytest.raises(gf.InvalidArgumentError, match="until_accuracy: is required"):
        AccuracyClock().check_range(10.0, None)


def test_accuracy_clock_maps_ln_n_over_l_to_alpha():
    """Exponential loss: α = ln(1/L), so ln(n/L) = K is α = K − ln n; logistic: α = ℓ⁻¹(n e^(−K)) with
    ℓ(α) = ln(1 + e^(−α)), i.e. α = −ln(e^(n e^(−K)) − 1)."""
    n, points = 7, jnp.array([3.0, 5.0, 9.0])
    with gf.x64():
        s1, ts = AccuracyClock().span(gf.get_loss("exponential"), n, jnp.asarray(0.0), jnp.asarray(12.0), points)
        np.testing.assert_allclose(s1, 12.0 - math.log(n), rtol=1e-14)
        np.testing.assert_allclose(ts, np.asarray(points) - math.log(n), rtol=1e-14)
        s1, _ = AccuracyClock().span(gf.get_loss("logistic"), n, jnp.asarray(-5.0), jnp.asarray(4.0), points)
        np.testing.assert_allclose(s1, -math.log(math.expm1(n * math.exp(-4.0))), rtol=1e-12)
        t1, tt = TimeClock().span(gf.get_loss("exponential"), n, jnp.asarray(0.0), jnp.asarray(8.0), points)
    assert float(t1) == 8.0 and np.array_equal(tt, points)


def test_clock_speed_acts_on_the_lag_beyond_its_band():
    """AccuracyClock.speed: 1 + e/τ with e = s − α(W) less the band (0 within it), within [¼, 4]; the
    time clock's speed is 1 whatever the lag."""
    from types import SimpleNamespace

    clock, tau, band = AccuracyClock(), 0.5, 0.01
    with gf.x64():
        for lag, expected in [(0.0, 1.0), (0.009, 1.0), (-0.009, 1.0), (0.11, 1.2), (-0.26, 0.5), (5.0, 4.0),
                              (-5.0, 0.25)]:
            pt = SimpleNamespace(alpha=jnp.asarray(3.0 - lag))
            np.testing.assert_allclose(clock.speed(pt, 3.0, tau, band), expected, rtol=1e-12)
            assert float(TimeClock().speed(pt, 3.0, tau, band)) == 1.0
        np.testing.assert_allclose(clock.speed(SimpleNamespace(alpha=jnp.asarray(2.9)), 3.0, tau), 1.2, rtol=1e-12)


def test_log_t_read_outs():
    """Time clock: ln t = ln s. Accuracy clock: u = t e^(−σ(α)), so ln t = σ(α) + ln u (σ = softplus)."""
    with gf.x64():
        aux = jnp.array([0.3, 2.5])
        assert float(TimeClock().log_t(jnp.asarray(4.0), aux)) == pytest.approx(math.log(4.0), rel=1e-15)
        for alpha in (-50.0, 0.0, 3.0, 800.0):
            expected = math.log1p(math.exp(alpha)) if alpha < 700 else alpha
            got = float(AccuracyClock().log_t(jnp.asarray(alpha), aux))
            assert got == pytest.approx(expected + math.log(2.5), rel=1e-14), alpha


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_the_same_flow_through_both_clocks(loss):
    """A linear model on separable data, to ln(n/L) = 12 in the accuracy clock; the time clock saved at
    the times the accuracy clock reports gives the same ln(n/L), norm and path length there."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 3))
    y = np.sign(x @ np.array([1.0, 0.4, -0.3]))
    model = gf.Linear(3, key=jax.random.PRNGKey(0), init_scale=1.0)
    kw = dict(loss=loss, rtol=1e-10, atol=1e-12, diagnostics=gf.Diagnostics(sharpness=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        acc = gf.simulate_flow(model, (x, y), clock="accuracy", until_accuracy=12.0, num_save=8, **kw)
        times = acc.t[1:]
        tim = gf.simulate_flow(model, (x, y), float(times[-1]), save_at=times, **kw)
    assert acc.status == "completed" and tim.status == "completed"
    np.testing.assert_allclose(tim.accuracy, acc.accuracy[1:], rtol=1e-7)
    np.testing.assert_allclose(tim.norm, acc.norm[1:], rtol=1e-7)
    np.testing.assert_allclose(tim.path_length, acc.path_length[1:], rtol=1e-6, atol=1e-12)
