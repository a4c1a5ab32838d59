"""simulate_flow(..., diagnostics=Diagnostics(error_check=True)): the reported differences shrink with the tolerance and
estimate the run's actual error."""

import jax
import numpy as np
import pytest

import gradflow as gf


@pytest.fixture(scope="module")
def runs(separable_2d):
    model = gf.Linear(3, key=jax.random.PRNGKey(0))
    opts = dict(t_max=1e4, num_save=30)
    with pytest.warns(UserWarning, match="Assumption 2.3"):
        out = {rtol: gf.simulate_flow(model, separable_2d, rtol=rtol, atol=rtol * 1e-2,
                                      diagnostics=gf.Diagnostics(error_check=True),
                                      save_params=rtol == 1e-5, **opts) for rtol in (1e-5, 1e-6)}
        ref = gf.simulate_flow(model, separable_2d, rtol=1e-10, atol=1e-12, save_params=True, **opts)
    return out, ref


@pytest.mark.parametrize("name", ["error_direction", "error_margins", "error_smoothed_margin"])
def test_difference_shrinks_like_the_tolerance(runs, name):
    out, _ = runs
    ratio = np.nanmax(out[1e-5].diagnostics[name]) / np.nanmax(out[1e-6].diagnostics[name])
    assert 4 < ratio < 25, ratio  # measured: 9.7 (direction), 9.6 (margins), 7.7 (α̃)


def test_difference_estimates_the_actual_error(runs):
    """‖Ŵ(rtol) − Ŵ(rtol/10)‖ against ‖Ŵ(rtol) − Ŵ(1e-10)‖ at the same save points (measured 1.13×)."""
    out, ref = runs
    res = out[1e-5]
    u = res.params_flat / np.linalg.norm(res.params_flat, axis=1, keepdims=True)
    v = ref.params_flat / np.linalg.norm(ref.params_flat, axis=1, keepdims=True)
    np.testing.assert_allclose(res.t, ref.t, rtol=1e-15)
    assert 0.5 < np.nanmax(res.error_direction) / np.max(np.linalg.norm(u - v, axis=1)) < 2


def test_second_run_recorded(runs):
    out, _ = runs
    res = out[1e-6]
    assert "params_flat" not in res.diagnostics  # only kept when asked for
    assert res.config["error_check"]["rtol"] == pytest.approx(1e-7)
    assert res.stats["error_check"]["steps"] > res.stats["steps"]
    assert np.all(np.isfinite(res.error_direction)) and res.error_direction[0] == 0.0
    np.testing.assert_allclose(res.error_smoothed_margin_rel, res.error_smoothed_margin / np.abs(res.smoothed_margin),
                               rtol=1e-3)


def test_bad_flag():
    with pytest.raises(gf.InvalidTypeError, match="error_check"):
        gf.Diagnostics(error_check=1)


def test_plot_flow_error_panel(runs):
    import matplotlib

    matplotlib.use("Agg")
    res = runs[0][1e-6]
    fig = gf.plot_flow(res)
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("error_check"))
    direction = panel.get_lines()[0].get_ydata()
    np.testing.assert_array_equal(direction, np.where(res.error_direction > 0, res.error_direction, np.nan))
    # six panels, two sharpness panels when it was recorded, and the error panel
    assert sum(ax.get_visible() for ax in fig.axes) == 6 + ("log_sharpness" in res.diagnostics) + 1  # one sharpness panel
