"""Same inputs (and seed) → bit-identical results on the same machine. See docs/determinism.md for
what may change across machines, backends and versions.

"Bit-identical" is checked with ``np.array_equal`` on every diagnostic and parameter array (NaN-free
here), the status, reason, config and the step statistics (not the wall time).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf

_rng = np.random.default_rng(11)
N = 6
X = _rng.standard_normal((N, 2))
_W_STAR = np.array([1.0, -0.7])
Y = np.where(X @ _W_STAR >= 0, 1.0, -1.0)
X = X + 0.4 * Y[:, None] * _W_STAR  # separable along w*


def _deep_linear():
    """Depth-2 linear net (several leaves, 2-homogeneous) with L(W_0) < ℓ(0) on (X, Y)."""
    m = gf.DeepLinear(2, (2, 3), key=jax.random.key(5))
    with gf.x64():
        a1 = jnp.asarray([[1.0, -0.7], [0.5, -0.2], [0.3, 0.4]]) * 1.5
        a2 = jnp.asarray([[1.2, 0.8, 0.1]]) * 1.5
        return eqx.tree_at(lambda mm: mm.layers, m, (a1, a2))


def _assert_identical(a: gf.FlowResult, b: gf.FlowResult):
    assert a.status == b.status and a.reason == b.reason and a.config == b.config
    stats = lambda r: {k: v for k, v in r.stats.items() if k != "wall_time"}  # noqa: E731
    assert stats(a) == stats(b)
    assert sorted(a.diagnostics) == sorted(b.diagnostics) and sorted(a.params) == sorted(b.params)
    for k in a.diagnostics:
        assert a.diagnostics[k].dtype == b.diagnostics[k].dtype
        np.testing.assert_array_equal(a.diagnostics[k], b.diagnostics[k], err_msg=k)
    for k in a.params:
        assert a.params[k].tobytes() == b.params[k].tobytes(), k


FLOW = dict(save_at=np.geomspace(1e-2, 300.0, 8), rtol=1e-9, atol=1e-12, save_params=True)


@pytest.fixture(scope="module")
def flow_run():
    r = gf.simulate_flow(_deep_linear(), (X, Y), 300.0, **FLOW)
    assert r.status == "completed" and r.accuracy[-1] > r.accuracy[0] + 2.0  # it did move
    return r


def test_flow_twice_is_bit_identical(flow_run):
    _assert_identical(flow_run, gf.simulate_flow(_deep_linear(), (X, Y), 300.0, **FLOW))


@pytest.mark.slow  # recompiles the solve, and clears the jit caches of the whole session
def test_flow_is_bit_identical_after_recompiling(flow_run):
    """Clearing JAX's caches forces XLA to compile again: the same program must come out."""
    jax.clear_caches()
    _assert_identical(flow_run, gf.simulate_flow(_deep_linear(), (X, Y), 300.0, **FLOW))


def test_flow_save_points_do_not_perturb_the_steps(flow_run):
    """Save points are dense-output evaluations: a different grid takes the very same steps, so the
    final state and the step counts agree to the bit."""
    other = gf.simulate_flow(_deep_linear(), (X, Y), 300.0, **{**FLOW, "save_at": np.linspace(1.0, 300.0, 5)})
    assert other.stats["steps"] == flow_run.stats["steps"]
    assert other.stats["accepted_steps"] == flow_run.stats["accepted_steps"]
    for k in flow_run.params:
        np.testing.assert_array_equal(other.params[k], flow_run.params[k], err_msg=k)
    np.testing.assert_array_equal(other.params_flat[-1], flow_run.params_flat[-1])


SGD = dict(learning_rate=0.05, batch_size=2, save_every=10, save_params=True)


def _sgd(seed, **kw):
    return gf.simulate_descent(_deep_linear(), (X, Y), "sgd", 60, seed=seed, **{**SGD, **kw})


@pytest.fixture(scope="module")
def sgd_run():
    r = _sgd(3)
    assert r.status == "completed" and list(r.iteration) == list(range(0, 61, 10))
    return r


def test_sgd_same_seed_is_bit_identical(sgd_run):
    _assert_identical(sgd_run, _sgd(3))


@pytest.mark.slow  # clears the jit caches of the whole session
def test_sgd_same_seed_after_recompiling(sgd_run):
    jax.clear_caches()
    _assert_identical(sgd_run, _sgd(3))


def test_sgd_seed_changes_the_batches_not_the_clock(sgd_run):
    """Another seed draws other permutations (a different path) on the same clock t = k·η; the save
    grid does not touch the iterates (same seed, other grid → same final W, bit for bit)."""
    other_seed = _sgd(4)
    np.testing.assert_array_equal(other_seed.t, sgd_run.t)
    assert not np.array_equal(other_seed.params_flat[1:], sgd_run.params_flat[1:])
    np.testing.assert_array_equal(other_seed.params_flat[0], sgd_run.params_flat[0])  # same W_0
    other_grid = _sgd(3, save_every=None, save_at=[0, 25, 60])
    np.testing.assert_array_equal(other_grid.params_flat[-1], sgd_run.params_flat[-1])
