"""Section 4 predictions measured on short flows (gradflow.theory).

Three flows are integrated once per module (accuracy clock, Kvaerno5, save_params=True): a linear
predictor on iris, a depth-3 deep linear net and a width-6 squared-ReLU net on the tiny separable
set of conftest. Every bound asserted below is derived in the comment next to it.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import theory
from gradflow.datasets import iris_binary
from gradflow.maxmargin import svm_direction

TEACHER = np.array([1.0, -0.5, 0.2])  # as in conftest: separates ``separable_2d`` with margin ≈ 0.207


def _direction_away_from(ub, z, phi_max=0.5, seed=0):
    """A separating unit u, as far from ū (up to phi_max) as a seeded search finds."""
    rng = np.random.default_rng(seed)
    best, best_phi = ub, 0.0
    for _ in range(300):
        v = rng.standard_normal(ub.shape[0])
        v -= (v @ ub) * ub
        v /= np.linalg.norm(v)
        for phi in np.linspace(phi_max, 0.0, 51)[:-1]:
            if phi <= best_phi:
                break
            u = np.cos(phi) * ub + np.sin(phi) * v
            if np.min(z @ u) > 0.1 * np.min(z @ ub):
                best, best_phi = u, phi
                break
    return best


# ------------------------------------------------------------------------------------------------
# Linear predictor on iris (Soudry et al. 2017; Proposition 4.4 with L = 1)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris_linear():
    x, y = iris_binary()
    svm = svm_direction(x, y)
    z = y[:, None] * x
    u = _direction_away_from(svm.direction, z)
    # scale c: L(w_0) = Σ exp(−c⟨z_i, u⟩) ≤ e^{−1} < ℓ(0) = 1, and among those the c with the smallest
    # c₀ = γc − α_0 (the constant of the certified bound used below)
    cs = np.geomspace(10.0, 1e5, 4000)
    alpha0 = -np.log(np.sum(np.exp(-cs[:, None] * (z @ u)[None, :]), axis=1))
    ok = alpha0 >= 1.0
    c = cs[ok][np.argmin(svm.margin * cs[ok] - alpha0[ok])]
    model = gf.Linear(x.shape[1], key=jax.random.PRNGKey(0))
    with gf.x64():
        model = eqx.tree_at(lambda m: m.w, model, jnp.asarray(c * u))
    res = gf.simulate_flow(model, (x, y), clock="accuracy", until_accuracy=1000.0, solver="kvaerno5",
                           rtol=1e-6, atol=1e-9, num_save=40, save_params=True)
    assert res.status == "completed"
    return x, y, svm, model, res


def test_linear_direction_converges_to_svm(iris_linear):
    x, y, svm, model, res = iris_linear
    angle = theory.direction_angle(res, svm.direction)
    assert angle[0] > 0.2  # a real start away from ū (measured 0.31 rad)
    # Monotone in ln(n/L): not a theorem for every start (from w_0 ∥ ū the angle first grows), but
    # from this start it decreases at every save point; allow 1e-9 rad of integration noise.
    assert np.all(np.diff(angle) <= 1e-9)
    # Certified bound (theory.linear_angle_bound): min_i p_i ≥ α and ‖w_t‖ ≤ ‖w_0‖ + (α_t − α_0)/γ
    # (‖∇L‖ ≥ γL) give cos∠(w_t, ū) ≥ α_t/(α_t + c₀), c₀ = γ‖w_0‖ − α_0; ≈ 0.137 rad at
    # ln(n/L) = 1000 for this start, below the initial 0.31.
    bound = theory.linear_angle_bound(res, svm.margin)
    assert np.all(angle <= bound + 1e-12)
    assert bound[-1] < 0.5 * angle[0]
    # Rate: w_t = ū ln t/γ + ρ + o(1) (Soudry et al. 2017, Thm 3) ⇒ ∠ = γ‖P⊥ρ‖/ln t + o(1/ln t), and
    # ln t = α + O(1) in the accuracy clock, so θ·α tends to a constant: over α ∈ [200, 1000] it may
    # change by < 20% (an O(1/√α) decay, the rate of the certified bound, would change it by √5 ≈ 2.2×).
    alpha = res.alpha
    late = alpha >= 200.0
    prod = angle[late] * alpha[late]
    assert prod.max() / prod.min() < 1.2
    assert angle[-1] < 2e-4  # = θ·α/α ≈ 0.105/1000 (measured 1.05e-4) with the 20% slack above and 1.6×


def test_linear_alignment_report(iris_linear):
    _, _, _, model, res = iris_linear
    rep = theory.alignment_report(res, model)
    # Theorem 4.1 applies (p_i linear in w): θ_t = ∠(w, −∇L) → 0, and for a linear model
    # −∇L = Σ q_i z_i lies in the cone of the z_i, converging to ū; measured 3e-3 rad at the end.
    assert rep["applies"] and rep["verdict"] == "asserted"
    assert rep["decreased"] and rep["final_angle"] < rep["mid_angle"]
    assert not theory.has_locally_lipschitz_gradients(gf.ReLUMLP((3, 4, 1), key=jax.random.PRNGKey(0)))


def test_saliency_of_linear_model_is_w_direction(iris_linear):
    x, _, _, model, res = iris_linear
    sal = theory.saliency(res.model, x[:6])
    w = np.asarray(res.model.w)
    np.testing.assert_allclose(sal, np.tile(w / np.linalg.norm(w), (6, 1)), rtol=0, atol=1e-13)
    flipped = eqx.tree_at(lambda m: m.w, res.model, -res.model.w)
    np.testing.assert_allclose(theory.saliency(flipped, x[:2]), -sal[:2], rtol=0, atol=1e-13)


def test_saliency_drift_vanishes_with_direction(iris_linear):
    x, _, _, model, res = iris_linear
    drift = theory.saliency_drift(res, model, x[:4])
    w = res.params_flat
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    exact = np.arccos(np.clip(wn @ wn[-1], -1, 1))  # maps are w_t/‖w_t‖ for every example
    np.testing.assert_allclose(drift["to_final"], np.tile(exact[:, None], (1, 4)), rtol=0, atol=1e-7)
    # → 0 with the direction: by the triangle inequality through ū, each step is at most
    # ∠(w_k, ū) + ∠(w_{k+1}, ū), and the last save point before the end is within 1e-3 of the
    # initial distance to the final map (∠(w, ū) ≈ 0.105/α: about 1.7e-4 rad at α ≈ 600)
    angle = theory.direction_angle(res, iris_linear[2].direction)
    assert np.all(drift["step"].max(axis=1) <= angle[1:] + angle[:-1] + 1e-10)
    assert drift["to_final"][-2].max() < 1e-3 * drift["to_final"][0].max()


# ------------------------------------------------------------------------------------------------
# Deep linear network, depth 3 (Proposition 4.4)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_linear_flow(separable_2d):
    x, y = separable_2d
    u = TEACHER / np.linalg.norm(TEACHER)  # margin 0.207, at 0.52 rad from ū
    widths = (3, 4, 4)
    model = gf.DeepLinear(3, widths, key=jax.random.PRNGKey(0), init_scale=0.1)
    rng = np.random.default_rng(1)
    vecs = [u, *(v / np.linalg.norm(v) for v in rng.standard_normal((2, 4))), np.ones(1)]
    with gf.x64():
        base = [np.asarray(a) + np.outer(vecs[j + 1], vecs[j]) for j, a in enumerate(model.layers)]
        kappa = 2.2  # product ≈ κ³u: L(W_0) ≈ 0.2 < ℓ(0) (checked below)
        model = eqx.tree_at(lambda m: m.layers, model, tuple(jnp.asarray(kappa * a) for a in base))
        assert float(jnp.sum(jnp.exp(-jnp.asarray(y) * model(jnp.asarray(x))))) < np.exp(-1.0)
    res = gf.simulate_flow(model, (x, y), clock="accuracy", until_accuracy=300.0, solver="kvaerno5",
                           rtol=1e-6, atol=1e-9, num_save=20, save_params=True)
    assert res.status == "completed"
    return x, y, model, res


def test_deep_linear_layers_rank_one_and_aligned(deep_linear_flow):
    x, y, model, res = deep_linear_flow
    al = theory.deep_linear_alignment(res, model, x, y)
    r1, norms = al["rank_one"], al["layer_norms"]
    assert r1.shape == (len(res), 3) and al["adjacent_alignment"].shape == (len(res), 2)
    np.testing.assert_allclose(r1[:, 2], 1.0, atol=1e-14)  # A_3 is a row vector
    assert np.all(r1[0, :2] < 0.995)  # not rank one at the start (measured 0.993, 0.991; at the end 0.99945, 0.99939)
    # A_{j+1}ᵀA_{j+1} − A_jA_jᵀ is conserved by the flow, so the energy off the top singular value
    # stays O(init noise²) while σ₁ grows like (α/γ)^{1/3}: 1 − σ₁/‖A‖_F ≈ tail/(2σ₁²) shrinks by
    # (‖A_j(0)‖/‖A_j(T)‖)². Allow a factor 2 for σ₁ ≠ ‖A‖_F and the tail's O(noise²) drift.
    predicted = (1 - r1[0, :2]) * (norms[0, :2] / norms[-1, :2]) ** 2
    assert np.all(1 - r1[-1, :2] <= 2 * predicted)
    assert np.all(r1[-1] > 0.999)
    assert np.all(al["adjacent_alignment"][-1] > 0.999)  # measured 0.99996


def test_deep_linear_product_turns_to_svm(deep_linear_flow):
    x, y, model, res = deep_linear_flow
    al = theory.deep_linear_alignment(res, model, x, y)
    ang = al["product_angle"]
    np.testing.assert_allclose(ang, theory.direction_angle(res, al["u_bar"], like_model=model), atol=1e-12)
    assert ang[0] > 0.5
    # Certified bound: any linear predictor u has cos∠(u, ū) ≥ γ(u)/γ (ū/γ is the min-norm point of
    # {u: y_i⟨x_i,u⟩ ≥ 1}); for u = A_3A_2A_1, γ(u) ≥ α/‖u‖ and ‖u‖ ≤ Π‖A_j‖ ≤ (‖W‖²/3)^{3/2} (AM–GM),
    # so cos∠ ≥ 3^{3/2} α̃_t/γ with α̃ = α/‖W‖³ the smoothed margin of the run.
    certified = np.arccos(np.clip(3**1.5 * res.smoothed_margin / al["gamma"], -1, 1))
    assert np.all(ang <= certified + 1e-10)
    # Tolerance: the off-rank-one parts stay O(noise) (conserved balance) while each layer grows like
    # (α/γ)^{1/3} ≈ 9 at ln(n/L) = 300, so the product is off ū by O(noise·σ₁⁻¹)-type terms plus the
    # O(1/ln t) linear-case lag: measured 0.034 rad (certified bound 0.090); asserting 0.06, about a ninth of the start.
    assert ang[-1] < 0.06
    assert np.all(np.diff(ang) < 1e-9)


# ------------------------------------------------------------------------------------------------
# Squared-ReLU network (Proposition 4.6)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squared_relu_flow(separable_2d, squared_relu_model):
    x, y = separable_2d
    res = gf.simulate_flow(squared_relu_model, (x, y), clock="accuracy", until_accuracy=60.0, solver="kvaerno5",
                           rtol=1e-6, atol=1e-9, num_save=15, save_params=True)
    assert res.status == "completed"
    return x, y, squared_relu_model, res


def test_squared_relu_neurons_reproduce_margins(squared_relu_flow):
    x, y, model, res = squared_relu_flow
    nrn = theory.squared_relu_neurons(res, model)
    s, th, sg = nrn["s"], nrn["theta"], nrn["signs"]
    np.testing.assert_allclose(s.sum(axis=1), 1.0, atol=1e-13)  # s(t) ∈ Δ_m
    np.testing.assert_allclose(np.linalg.norm(th, axis=2), 1.0, atol=1e-13)
    # p_i/‖W‖² = Σ_j s_j φ_ij(θ_j) (2-homogeneity, Prop. 4.6.1): recomputed from the unflattened
    # rows, it must equal the flow's own per-example diagnostic.
    phi = y[None, :, None] * sg[None, None, :] * np.maximum(0.0, np.einsum("nd,tmd->tnm", x, th)) ** 2
    np.testing.assert_allclose(np.einsum("tnm,tm->tn", phi, s), res.margins, rtol=1e-10, atol=1e-12)


def test_lp_global_margin_dominates_trained_net(squared_relu_flow):
    x, y, model, res = squared_relu_flow
    g = theory.squared_relu_guarantees(res, model, x, y, num_directions=642)
    assert g["margin"] > 0
    np.testing.assert_allclose(g["margin"], res.margin[-1], rtol=1e-10)
    # W/‖W‖ defines the signed measure ν = Σ_j σ_j s_j δ_{θ_j} of mass 1, whose margin is exactly the
    # network's: hence margin ≤ true global max ≤ upper_bound. The LP dictionary contains the final
    # θ_j (extra_directions), so ν is LP-feasible and margin ≤ value too; likewise s(T) is feasible
    # for the local LP, and the local LP is the global one restricted to the θ_j with fixed signs.
    assert g["margin"] <= g["local"] + 1e-10
    assert g["local"] <= g["global_value"] + 1e-10
    assert g["global_value"] <= g["global_upper_bound"]
    # the smoothed margin α̃ = α/‖W‖² is nondecreasing once L < ℓ(0) (Lyu & Li 2019; the paper's
    # Assumption 2.3 regime) and α ≤ min_i p_i, so α̃ climbs towards the margin from below;
    # the limit margin is the local guarantee (Prop. 4.6.1), not reached at ln(n/L) = 60
    # (measured margin 0.102 vs local 0.139).
    sm = res.smoothed_margin
    assert np.all(np.diff(sm) >= -1e-9) and np.all(sm <= res.margin + 1e-12)
    cov = g["covering"]
    assert np.all(cov["eps"] >= cov["drift"]) and cov["drift"][-1] == 0.0
    assert np.all(cov["eps"] >= cov["grid_radius"])
    # width 6 (3 neurons per sign) cannot ε-cover S² for small ε: the Prop. 4.6.2 guarantee is vacuous
    assert cov["best_eps"] > 0.5 and g["implied_lower_bound"] < 0
    held = theory.covering(res, model, eps=cov["best_eps"], num_directions=642)["holds"]
    assert held[cov["best_index"]] and held.sum() >= 1
