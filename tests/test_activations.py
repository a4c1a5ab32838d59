"""Activation-pattern diagnostics (gradflow.activations) against brute-force counts from densely saved W."""

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.activations import NEAR_ZERO_EPS, has_activation_pattern
from gradflow.params import partition


def _patterns_from_saved(model, x, params_flat):
    """The model's activation pattern at every saved W (eager, row by row)."""
    with gf.x64():
        p0, static = partition(model)
        unravel = jax.flatten_util.ravel_pytree(p0)[1]
        return [eqx.combine(unravel(jnp.asarray(row)), static).activation_pattern(jnp.asarray(x)) for row in params_flat]


def _numpy_counts(patterns):
    """Net sign flips and argmax switches between consecutive rows, and the near-zero share, in numpy."""
    signs = [np.concatenate([np.ravel(np.asarray(z) > 0) for z in p.pre_activations]) for p in patterns]
    flips = np.array([0] + [int(np.sum(a != b)) for a, b in zip(signs[:-1], signs[1:], strict=True)])
    share = []
    for p in patterns:
        zs = [np.asarray(z) for z in p.pre_activations]
        near = sum(int(np.sum((np.abs(z) > 0) & (np.abs(z) < NEAR_ZERO_EPS * np.sqrt(np.mean(z**2))))) for z in zs)
        share.append(near / sum(z.size for z in zs))
    return flips, np.array(share)


def _numpy_window_argmax(z):
    """(n, C, H, W) → (n, C, H/2, W/2) index of the max in each 2×2 window, by explicit loops."""
    n, c, h, w = z.shape
    out = np.zeros((n, c, h // 2, w // 2), int)
    for i in range(h // 2):
        for j in range(w // 2):
            block = z[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(n, c, 4)
            out[:, :, i, j] = np.argmax(block, axis=-1)
    return out


# sliding=False: 'auto' switches solvers, which it cannot do with sliding (it then stays explicit)
MLP_OPTS = dict(t_max=50.0, until_accuracy=6.0, save_params=True, num_save=40, rtol=1e-6, atol=1e-9, solver="auto",
                auto_explicit_steps=15, sliding=False)


def _checkpointed(path) -> gf.RunOptions:
    return gf.RunOptions(checkpoint=path, checkpoint_every=7)


def _mlp_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3))
    return x, np.sign(x[:, 0] + 0.3)


@pytest.fixture(scope="module")
def mlp_case(tmp_path_factory):
    """A tiny ReLUMLP from a random start, saved densely, run in many segments: solver='auto'
    with short explicit segments (segment ends between save points) and checkpoint chunks."""
    x, y = _mlp_data()
    model = gf.ReLUMLP((3, 8, 8, 1), key=jax.random.PRNGKey(0), init_scale=2.0)
    path = tmp_path_factory.mktemp("act") / "mlp.npz"
    res = gf.simulate_flow(model, (x, y), run=_checkpointed(path), **MLP_OPTS)
    return model, x, res


def test_counts_survive_an_interrupted_run(mlp_case, tmp_path, monkeypatch):
    """Interrupted after two checkpointed chunks and resumed in a new call: the same counts
    (the resumed driver rebuilds the carried pattern from the checkpointed state)."""
    from gradflow.flow.checkpoint import CheckpointStore

    model, x, res = mlp_case
    y = np.sign(x[:, 0] + 0.3)
    save, calls = CheckpointStore.save, []

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointStore, "save", save_then_stop)
    path = str(tmp_path / "resume.npz")
    with pytest.raises(KeyboardInterrupt):
        gf.simulate_flow(model, (x, y), run=_checkpointed(path), **MLP_OPTS)
    monkeypatch.setattr(CheckpointStore, "save", save)
    resumed = gf.simulate_flow(model, (x, y), run=_checkpointed(path), **MLP_OPTS)
    np.testing.assert_array_equal(resumed.activation_flips, res.activation_flips)
    np.testing.assert_array_equal(resumed.near_zero_share, res.near_zero_share)


def test_flip_count_equals_brute_force(mlp_case):
    model, x, res = mlp_case
    chunks = -(-int(np.sum(np.isfinite(res.t))) // 7)
    assert res.stats["segments"] > chunks  # segments end between save points too: the carry is exercised
    assert res.status == "stopped at target"  # the last row is the event, not a save point
    flips, share = _numpy_counts(_patterns_from_saved(model, x, res.params_flat))
    assert flips.sum() > 10  # the pattern does change along this run
    np.testing.assert_array_equal(res.activation_flips, flips)
    np.testing.assert_allclose(res.near_zero_share, share, rtol=0, atol=1e-15)
    assert res.config["activation_units"] == 12 * 16
    assert "pool_switches" not in res.diagnostics


def test_switch_off_and_bad_flag(mlp_case):
    model, x, _ = mlp_case
    y = np.sign(x[:, 0] + 0.3)
    res = gf.simulate_flow(model, (x, y), t_max=0.5, num_save=4, sliding=False,
                           diagnostics=gf.Diagnostics(activation_patterns=False))
    assert "activation_flips" not in res.diagnostics and not res.config["activation_patterns"]
    with pytest.raises(gf.InvalidTypeError, match="activation_patterns"):
        gf.Diagnostics(activation_patterns="yes")
    assert not has_activation_pattern(gf.Linear(3, key=jax.random.PRNGKey(0)))


@pytest.fixture(scope="module")
def cnn_case():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 1, 4, 4))
    y = np.where(x[:, 0, :2].sum(axis=(1, 2)) > 0, 1.0, -1.0)
    model = gf.HomogeneousCNN(1, 4, 1, key=jax.random.PRNGKey(2), channels=(2, 2), hidden=(3, 3), kernel_size=3,
                              init_scale=2.5)
    res = gf.simulate_flow(model, (x, y), t_max=20.0, save_params=True, num_save=30, rtol=1e-6, atol=1e-9)
    return model, x, res


@pytest.mark.slow  # the CNN flow to t = 20 from a random start: 204 s (measured beside benchmarks)
def test_pool_switch_count_equals_brute_force(cnn_case):
    model, x, res = cnn_case
    # a random start through ReLU and max-pool kinks: it completes, well inside its step budget
    assert res.status == "completed", res.reason
    assert res.stats["steps"] < 0.5 * res.config["max_steps"], res.stats["steps"]
    patterns = _patterns_from_saved(model, x, res.params_flat)
    flips, share = _numpy_counts(patterns)
    np.testing.assert_array_equal(res.activation_flips, flips)
    np.testing.assert_allclose(res.near_zero_share, share, rtol=0, atol=1e-15)
    argmax = [np.concatenate([_numpy_window_argmax(np.asarray(z)).ravel() for z in p.pre_activations[:2]]) for p in patterns]
    switches = np.array([0] + [int(np.sum(a != b)) for a, b in zip(argmax[:-1], argmax[1:], strict=True)])
    assert switches.sum() > 0
    np.testing.assert_array_equal(res.pool_switches, switches)
    assert res.config["pool_windows"] == 6 * (2 * 2 * 2 + 2 * 1 * 1)


@pytest.mark.slow  # shares the CNN flow above
def test_cnn_pattern_is_the_forward_pass(cnn_case):
    """The pre-activations rebuild Φ, and the argmax picks the max-pool's value (eqx.nn.MaxPool2d)."""
    model, x, _ = cnn_case
    with gf.x64():
        xj = jnp.asarray(x)
        pat = model.activation_pattern(xj)
        z1, z2, z3, z4 = pat.pre_activations
        out = jax.vmap(model.fc3)(jax.nn.relu(z4))[:, 0]
        np.testing.assert_allclose(out, model(xj), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(z2, jax.vmap(lambda z: model.conv2(model.pool(jax.nn.relu(z))))(z1), rtol=1e-12, atol=1e-14)
        for z, a in zip((z1, z2), pat.pool_argmax, strict=True):
            np.testing.assert_array_equal(a, _numpy_window_argmax(np.asarray(z)))
            n, c, h, w = z.shape
            win = np.asarray(z).reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
            picked = np.take_along_axis(win, np.asarray(a)[..., None].astype(int), axis=-1)[..., 0]
            np.testing.assert_allclose(np.maximum(picked, 0), jax.vmap(model.pool)(jax.nn.relu(z)), rtol=0, atol=0)


def test_nonhomogeneous_patterns_rebuild_the_output():
    """SmallDenseNet: Φ = head(mean relu(last block state)); SmallResNet: Φ = head(mean relu(last z))."""
    rng = np.random.default_rng(3)
    with gf.x64():
        x = jnp.asarray(rng.normal(size=(3, 1, 8, 8)))
        dense = gf.SmallDenseNet(1, 8, 3, key=jax.random.PRNGKey(0), stem=4, growth=2, block_layers=(1, 1))
        last = dense.activation_pattern(x).pre_activations[-1]
        np.testing.assert_allclose(jax.vmap(dense.head)(jnp.mean(jax.nn.relu(last), axis=(2, 3))), dense(x), rtol=1e-12, atol=1e-14)
        res = gf.SmallResNet(1, 8, 3, key=jax.random.PRNGKey(0), channels=(4, 4))
        pre = res.activation_pattern(x).pre_activations
        assert len(pre) == 1 + 2 * len(res.convs)
        np.testing.assert_allclose(jax.vmap(res.head)(jnp.mean(jax.nn.relu(pre[-1]), axis=(2, 3))), res(x), rtol=1e-12, atol=1e-14)


def test_plot_flow_activation_panel(mlp_case, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    _, _, res = mlp_case
    fig = gf.plot_flow(res)
    panel = next(ax for ax in fig.axes if ax.get_title() == "activation pattern")
    line = panel.get_lines()[0]
    acc, flips = res.accuracy, res.activation_flips.astype(float)
    gain = np.diff(acc)
    rate = flips[1:][gain > 0] / gain[gain > 0]
    np.testing.assert_allclose(line.get_ydata(), np.where(rate > 0, rate, np.nan), rtol=1e-12)
    gf.plot_flow(res, tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size > 0
