"""Log-space losses: exact where L underflows, and consistent with direct formulas where it does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.diagnostics import evaluate
from gradflow.params import partition

DELTA = np.array([0.0, 0.5, 1.0, 3.0, 7.0])


def _linear_at_margins(margins):
    """A linear model and data with y_i⟨w, x_i⟩ = margins_i exactly (x_i = margins_i e_i, w = 1)."""
    n = len(margins)
    x = np.diag(margins)
    y = np.ones(n)
    model = gf.Linear(n, key=jax.random.PRNGKey(0))
    import equinox as eqx

    with gf.x64():
        model = eqx.tree_at(lambda m: m.w, model, jnp.ones(n))
    return model, x, y


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_alpha_and_grad_at_tiny_loss(loss):
    """L = Σ e^(−5000−δ_i) ≈ e^(−5000): α = 5000 − ln Σ e^(−δ_i), ∇α_i = x_i softmax(−δ)_i."""
    margins = 5000.0 + DELTA
    model, x, y = _linear_at_margins(margins)
    with gf.x64():
        params, static = partition(model)
        pt = evaluate(params, static, jnp.asarray(x), jnp.asarray(y), gf.get_loss(loss))
    lse = np.log(np.sum(np.exp(-DELTA)))
    assert np.isfinite(float(pt.alpha)) and np.isfinite(float(pt.log_loss))
    np.testing.assert_allclose(float(pt.log_loss), -5000.0 + lse, rtol=1e-15)
    np.testing.assert_allclose(float(pt.alpha), 5000.0 - lse, rtol=1e-15)
    softmax = np.exp(-DELTA) / np.exp(-DELTA).sum()
    # ∂α/∂w_i = softmax_i · ∂p_i/∂w_i = softmax_i · margins_i
    np.testing.assert_allclose(np.asarray(pt.grad_alpha.w), softmax * margins, rtol=1e-13)
    # ln |ℓ'(α)| ≈ −α for both losses here
    np.testing.assert_allclose(float(pt.log_neg_dloss), -float(pt.alpha), rtol=1e-15)


def test_cross_entropy_at_tiny_loss():
    """3 classes, Φ_y = 5000 + δ_i, others 0: q_i = 5000 + δ_i − ln 2, α = 5000 − ln 2 − ln Σ e^(−δ)."""
    n = len(DELTA)
    outputs = np.zeros((n, 3))
    labels = np.arange(n) % 3
    outputs[np.arange(n), labels] = 5000.0 + DELTA
    ce = gf.CrossEntropy()
    with gf.x64():
        out = jnp.asarray(outputs)
        lab = jnp.asarray(labels)
        alpha, grad = jax.value_and_grad(lambda o: ce.alpha(o, lab))(out)
        hard = gf.losses.hard_margins(out, lab, True)
    lse = np.log(np.sum(np.exp(-DELTA)))
    np.testing.assert_allclose(float(alpha), 5000.0 - np.log(2) - lse, rtol=1e-15)
    softmax = np.exp(-DELTA) / np.exp(-DELTA).sum()
    g = np.asarray(grad)
    np.testing.assert_allclose(g[np.arange(n), labels], softmax, rtol=1e-12)
    others = np.ones_like(g, dtype=bool)
    others[np.arange(n), labels] = False
    np.testing.assert_allclose(g[others].reshape(n, 2), np.repeat(-softmax[:, None] / 2, 2, axis=1), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(hard), 5000.0 + DELTA, rtol=1e-15)


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_moderate_loss_matches_direct_formula(loss):
    """Where nothing underflows, log-space results equal the textbook formulas."""
    p = np.array([-0.7, 0.1, 0.5, 1.3, 2.0, 4.0])
    with gf.x64():
        lf = gf.get_loss(loss)
        log_loss = float(lf.log_loss(jnp.asarray(p), jnp.ones(len(p))))
        alpha = float(lf.alpha_from_log_loss(jnp.asarray(log_loss)))
    if loss == "exponential":
        L = np.sum(np.exp(-p))
        a = -np.log(L)
    else:
        L = np.sum(np.log1p(np.exp(-p)))
        a = -np.log(np.expm1(L))
    np.testing.assert_allclose(log_loss, np.log(L), rtol=1e-14)
    np.testing.assert_allclose(alpha, a, rtol=1e-13)


@pytest.mark.parametrize("z", [-30.0, -1.0, 0.3, 19.99, 20.01, 300.0, 5000.0])
def test_logistic_inverse_roundtrip(z):
    """ℓ⁻¹(ℓ(z)) = z across the branches of the log-space formulas."""
    with gf.x64():
        lf = gf.Logistic()
        back = float(lf.alpha_from_log_loss(lf.log_ell(jnp.asarray(z))))
        dz = float(jax.grad(lambda v: lf.alpha_from_log_loss(lf.log_ell(v)))(jnp.asarray(z)))
    np.testing.assert_allclose(back, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dz, 1.0, rtol=1e-9)


def test_flow_at_tiny_loss_is_finite():
    """An accuracy-clock flow to ln(n/L) = 5,000 (L ≈ e^(−5000)) keeps W, α, ∇α and log t finite."""
    model, x, y = _linear_at_margins(np.array([1.0, 1.5]))
    r = gf.simulate_flow(model, (x, y), clock="accuracy", until_accuracy=5000.0, rtol=1e-8, atol=1e-12,
                         solver="kvaerno5", num_save=20)
    assert r.status == "completed"
    assert abs(r.accuracy[-1] - 5000.0) < 1e-6
    for k in ("alpha", "norm", "grad_norm", "smoothed_margin", "log_loss"):
        assert np.all(np.isfinite(r.diagnostics[k])), k
    assert r.log_t[0] == -np.inf and np.all(np.isfinite(r.log_t[1:]))  # t = 0 at the start
    assert r.log_t[-1] > 700  # t itself overflows float64; log t does not
