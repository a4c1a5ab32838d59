"""Copies of one kink surface (gradflow.sliding.copies): found against an independent grouping of
the inputs, and slid as one constraint with one σ (closed forms where independent σ's would slide
across a surface the flow crosses)."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.kinkmap import field_kinks
from gradflow.params import partition
from gradflow.sliding import Sliding, find_copies
from gradflow.sliding.copies import copies_of_values

D = 0.5  # the toy's slope of the linear term


def _toy_apply(p, xi):
    """L = e^(−Φ) = 3 relu(w₁) − 2 relu(w₁) + s D w₁ + ½ w₂² + 1, the two ReLUs read the same
    pre-activation (copies of one surface, c = 3 and −2), so L = relu(w₁) + s D w₁ + ½ w₂² + 1."""
    w1, w2 = p["w"][0], p["w"][1]
    u = w1 * xi[0]
    return -jnp.log(3.0 * jax.nn.relu(u) - 2.0 * jax.nn.relu(u) + xi[1] * D * w1 + 0.5 * w2**2 + 1.0)


def _toy_exact(t, s):
    """The flow of the toy: w₁ falls at rate 1 + sD to 0 at t₁ = 1/(1 + sD); there it crosses
    (s = +1: L' = D > 0 on the other side, w₁ = −D(t − t₁)) or slides (s = −1: L' = −D < 0 there,
    w₁ = 0 with σ = D); w₂ = e^(−t)."""
    t = np.asarray(t)
    t1 = 1.0 / (1.0 + s * D)
    w1 = np.where(t < t1, 1.0 - (1.0 + s * D) * t, -D * (t - t1) if s > 0 else 0.0)
    return np.stack([w1, np.exp(-t)], axis=-1)


@pytest.mark.parametrize("s", [1.0, -1.0])
def test_copies_share_one_sigma_in_the_closed_form(s):
    """Independent σ's for the two copies span 3σ₁ − 2σ₂ ∈ [−2, 3] ∋ −sD: the flow would stop on
    w₁ = 0 in both cases. With one σ the span is σ ∈ [0, 1]: it crosses for s = +1, slides for s = −1."""
    model = gf.as_model(_toy_apply, {"w": jnp.array([1.0, 1.0])}, degree=None, batched=False)
    data = (np.array([[1.0, s]]), np.ones(1))
    ts = np.array([0.0, 0.3, 0.6, 1.0, 1.5, 2.5, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the repeated ReLU, L(W₀) > ℓ(0)
        r = gf.simulate_flow(model, data, 3.0, save_at=ts, rtol=1e-9, atol=1e-11, save_params=True)
    assert r.status == "completed", r.reason
    assert r.config["surface_copies"] == {"classes": 1, "followers": 1}
    np.testing.assert_allclose(r.diagnostics["params_flat"], _toy_exact(r.t, s), atol=1e-7)
    late = r.t > 1.0 / (1.0 + s * D) + 1e-6
    assert np.all(r.diagnostics["sliding_pairs"][late] == (1 if s < 0 else 0))
    assert r.stats["sliding_entries"] == (1 if s < 0 else 0)


class _BiasedConv(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 3, 2, key=k1, dtype=jnp.float64)
        self.head = eqx.nn.Linear(3 * 4 * 4, 1, key=k2, dtype=jnp.float64)

    def __call__(self, x):
        return jax.vmap(lambda xi: self.head(jnp.ravel(jax.nn.relu(self.conv(xi))))[0])(x)


def _expected_followers(x, channels):
    """The pairs (example, channel, i, j) of a 2×2 VALID convolution with bias whose input patches
    are bitwise equal to an earlier pair's of the same channel (flat indices in the site's order)."""
    n, _, h, w = x.shape
    followers = set()
    for c in range(channels):
        first = {}
        for e in range(n):
            for i in range(h - 1):
                for j in range(w - 1):
                    key = x[e, :, i:i + 2, j:j + 2].tobytes()
                    flat = ((e * channels + c) * (h - 1) + i) * (w - 1) + j
                    if key in first:
                        followers.add(flat)
                    else:
                        first[key] = flat
    return followers


def test_copies_are_the_pairs_of_equal_patches():
    """A biased convolution's pre-activation on a patch is W·patch + b: two pairs are copies exactly
    when their channel and patch agree (blank patches, saturated ones, a repeated image)."""
    rng = np.random.default_rng(0)
    x = np.where(rng.random((4, 1, 5, 5)) < 0.6, 0.0, rng.choice([1.0, 16.0], size=(4, 1, 5, 5)))
    x[3] = x[0]  # a repeated example: all its pairs are copies
    with gf.x64():
        model = _BiasedConv(jax.random.PRNGKey(1))
        params, static = partition(model)
        xs = jnp.asarray(x, jnp.float64)
        field = field_kinks(params, static, xs)
        sliding = Sliding(field.sites, None, 1, field.example)
        copies = find_copies(sliding.kink_values, params, static, xs)
        z = np.asarray(sliding.kink_values(params, static, xs))
        # a second search on an equal model (a new run of it) reuses the compiled probe
        compiles, equal = [], jax.tree_util.tree_map(jnp.copy, params)
        listener = lambda event, secs, **kw: compiles.append(kw.get("fun_name")) if "backend_compile" in event else None  # noqa: E731
        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            again = find_copies(Sliding(field.sites, None, 1, field.example).kink_values, equal, static, xs)
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    np.testing.assert_array_equal(np.asarray(again.followers), np.asarray(copies.followers))
    expected = _expected_followers(x, 3)
    assert len(expected) > 3 * 16  # the repeated example alone gives 48
    assert set(np.asarray(copies.followers).tolist()) == expected
    np.testing.assert_array_equal(z[np.asarray(copies.followers)], z[np.asarray(copies.leaders)])
    assert np.all(np.asarray(copies.leaders) < np.asarray(copies.followers))


def test_constant_and_nonfinite_rows_are_not_copies():
    z = np.array([[1.0, 2.0, 3.0],   # 0: leader of {0, 2}
                  [0.0, 0.0, 0.0],   # 1: constant
                  [1.0, 2.0, 3.0],   # 2: copy of 0
                  [0.0, 0.0, 0.0],   # 3: constant (not a copy of 1)
                  [np.nan, 1.0, 1.0],  # 4, 5: not finite
                  [np.nan, 1.0, 1.0],
                  [1.0, 2.0, 3.5],   # 6: alone
                  [1.0, 2.0, 3.0]])  # 7: copy of 0
    copies = copies_of_values(z)
    assert np.asarray(copies.followers).tolist() == [2, 7] and np.asarray(copies.leaders).tolist() == [0, 0]
    assert copies.classes == 1 and copies.count == 2
    assert copies_of_values(z[[0, 1, 3, 4, 6]]) is None
    c = jnp.arange(8.0)
    np.testing.assert_array_equal(np.asarray(copies.gather(c)), [9.0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(np.asarray(copies.spread(c)), [0.0, 1, 0, 3, 4, 5, 6, 0])
