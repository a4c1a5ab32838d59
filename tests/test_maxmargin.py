"""Tests for gradflow.maxmargin: linear SVM through the origin and Proposition 4.6 LPs."""

from __future__ import annotations

import itertools
import warnings

import jax
import numpy as np
import pytest
from sklearn.svm import SVC

import gradflow as gf
from gradflow.datasets import appendix_a_synthetic, breast_cancer_binary, iris_binary, wine_binary
from gradflow.maxmargin import (
    MaxMarginResult,
    global_margin_estimate,
    kkt_residual,
    local_margin_guarantee,
    sphere_directions,
    svm_direction,
)
from gradflow.ntk import ntk_features, ntk_max_margin, squared_relu_surface


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    # 2·arcsin(‖â − b̂‖/2): accurate for tiny angles, where arccos(cos) loses half the digits
    chord = np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b))
    return float(2.0 * np.arcsin(min(chord / 2.0, 1.0)))


def _separable(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = np.sign(x @ rng.standard_normal(d))
    return x, y


def _enumeration_svm(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact reference by exhaustive search over support sets (independent of the solver).

    u* = argmin ‖u‖ s.t. z u ≥ 1 (z_i = y_i x_i) lies in the cone of its tight rows, and by
    Carathéodory in the cone of at most rank ≤ d of them, so u* is the minimum-norm solution
    of z_S u = 1 for some S with |S| ≤ d. Every feasible such candidate has ‖u‖ ≥ ‖u*‖, so the
    shortest feasible candidate is u*. Batched over all subsets with numpy's pinv.
    """
    z = y[:, None] * x
    n, d = z.shape
    best_u, best_norm = None, np.inf
    for k in range(1, d + 1):
        subsets = np.array(list(itertools.combinations(range(n), k)))
        zs = z[subsets]  # (S, k, d)
        u = np.einsum("sdk,sk->sd", np.linalg.pinv(zs), np.ones(subsets.shape))
        feasible = np.all(u @ z.T >= 1.0 - 1e-9, axis=1)
        feasible &= np.all(np.abs(np.einsum("skd,sd->sk", zs, u) - 1.0) < 1e-9, axis=1)
        if np.any(feasible):
            norms = np.linalg.norm(u[feasible], axis=1)
            j = int(np.argmin(norms))
            if norms[j] < best_norm:
                best_u, best_norm = u[feasible][j], float(norms[j])
    assert best_u is not None
    return best_u / best_norm, 1.0 / best_norm


# ------------------------------------------------------------------------------------ svm


@pytest.mark.parametrize(
    "data",
    [iris_binary(), _separable(40, 3, seed=1), _separable(25, 4, seed=2)],
    ids=["iris", "random40x3", "random25x4"],
)
def test_svm_matches_exhaustive_reference(data):
    x, y = data
    res = svm_direction(x, y)
    ref_dir, ref_margin = _enumeration_svm(x, y)
    assert _angle(res.direction, ref_dir) < 1e-8
    assert abs(res.margin - ref_margin) / ref_margin < 1e-8
    assert abs(np.linalg.norm(res.direction) - 1.0) < 1e-14
    assert kkt_residual(x, y, res) <= 1e-8


def test_svm_matches_sklearn_svc_on_symmetrized_data():
    # sklearn's SVC always fits an *unregularized* intercept b, so it solves a different
    # problem from ours (no intercept). Fair comparison: add the mirror images (−x_i, −y_i).
    # If (w, b) is feasible for the symmetrized set then so is (w, −b), hence (w, 0) by
    # convexity, with the same ‖w‖: the SVC weight vector (unique) is exactly our u* = ū/γ.
    # libsvm stores its kernel cache in single precision (Qfloat), so it is only accurate to
    # ~1e-5 here; the 1e-8 agreement is checked against the exact reference above.
    x, y = _separable(60, 4, seed=0)
    res = svm_direction(x, y)
    svc = SVC(kernel="linear", C=1e6, tol=1e-9).fit(np.vstack([x, -x]), np.concatenate([y, -y]))
    w = svc.coef_[0]
    assert _angle(w, res.direction) < 1e-5
    assert abs(1.0 / np.linalg.norm(w) - res.margin) / res.margin < 1e-4
    assert abs(svc.intercept_[0]) < 1e-4


def test_svm_dual_and_support_are_consistent():
    x, y = iris_binary()
    res = svm_direction(x, y)
    assert isinstance(res, MaxMarginResult)
    # Σα = ‖u*‖² = 1/γ² and ū = γ Σ α_i y_i x_i.
    assert abs(res.dual.sum() * res.margin**2 - 1.0) < 1e-10
    np.testing.assert_allclose(res.margin * (res.dual * y) @ x, res.direction, atol=1e-10)
    assert np.all(res.dual >= 0.0)
    np.testing.assert_array_equal(res.support, np.flatnonzero(res.dual > 0))
    z = y[:, None] * x
    np.testing.assert_allclose(z[res.support] @ res.direction, res.margin, rtol=1e-10)
    off = np.setdiff1d(np.arange(len(y)), res.support)
    assert np.all(z[off] @ res.direction >= res.margin * (1 - 1e-10))


@pytest.mark.parametrize(
    "loader",
    [breast_cancer_binary, lambda: wine_binary((0, 1)), lambda: _separable(500, 5, seed=3)],
    ids=["breast_cancer", "wine01", "random500x5"],
)
def test_svm_kkt_residual_small(loader):
    x, y = loader()
    res = svm_direction(x, y)
    assert kkt_residual(x, y, res) <= 1e-8
    assert res.margin > 0


def test_svm_degenerate_support_closed_form():
    # Four tight points in 2-D (more than d) plus duplicates and a slack point: ū = e1, γ = 1.
    x = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1], [1, 1], [3, 0.5]], dtype=float)
    y = np.array([1, 1, -1, -1, 1, 1], dtype=float)
    res = svm_direction(x, y)
    np.testing.assert_allclose(res.direction, [1.0, 0.0], atol=1e-12)
    assert abs(res.margin - 1.0) < 1e-12
    assert kkt_residual(x, y, res) <= 1e-10
    assert 5 not in res.support


def test_svm_invariances():
    x, y = _separable(30, 3, seed=4)
    res = svm_direction(x, y)
    scaled = svm_direction(2.5 * x, y)
    assert abs(scaled.margin - 2.5 * res.margin) < 1e-12
    perm = np.random.default_rng(0).permutation(len(y))
    permuted = svm_direction(x[perm], y[perm])
    assert _angle(permuted.direction, res.direction) < 1e-10


def test_kkt_residual_detects_wrong_answer():
    x, y = iris_binary()
    res = svm_direction(x, y)
    tilted = res.direction + np.array([0.0, 1e-3, 0.0])
    bad = MaxMarginResult(
        direction=tilted / np.linalg.norm(tilted),
        margin=res.margin,
        dual=res.dual,
        support=res.support,
    )
    assert kkt_residual(x, y, bad) > 1e-3
    wrong_margin = MaxMarginResult(res.direction, 1.01 * res.margin, res.dual, res.support)
    assert kkt_residual(x, y, wrong_margin) > 5e-3


def test_svm_rejects_non_separable_and_bad_labels():
    xor = np.array([[1, 1, 1], [-1, -1, 1], [1, -1, 1], [-1, 1, 1]], dtype=float)
    with pytest.raises(ValueError, match="not linearly separable"):
        svm_direction(xor, np.array([1.0, 1.0, -1.0, -1.0]))
    # Separable with a bias but not through the origin (1-D, same sign inputs).
    with pytest.raises(ValueError, match="not linearly separable"):
        svm_direction(np.array([[1.0], [2.0]]), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="not linearly separable"):
        svm_direction(*breast_cancer_binary(n_features=10))
    with pytest.raises(ValueError, match="±1"):
        svm_direction(np.eye(2), np.array([0.0, 1.0]))


# ------------------------------------------------------------------------------ Prop. 4.6


def test_local_guarantee_closed_form_two_points_two_neurons():
    # x_1 = (a, 0), y_1 = +1; x_2 = (0, b), y_2 = −1; neuron 1 points along e2 with sign −1,
    # neuron 2 along e1 with sign +1 (the paper's (−1)^j, j = 1, 2). Then φ = [[0, a²], [b², 0]]
    # and max_{s∈Δ} min(s_2 a², s_1 b²) = a²b²/(a² + b²) at s_2 = b²/(a² + b²).
    a, b = 0.8, 0.5
    x = np.array([[a, 0.0], [0.0, b]])
    y = np.array([1.0, -1.0])
    thetas = np.array([[0.0, 1.0], [1.0, 0.0]])
    expected = a**2 * b**2 / (a**2 + b**2)
    assert abs(local_margin_guarantee(x, y, thetas) - expected) < 1e-12
    assert abs(local_margin_guarantee(x, y, thetas, signs=[-1, 1]) - expected) < 1e-12
    # max–min, not the paper's printed min–max (which would be min(a², b²) = 0.25 here).
    assert expected < min(a**2, b**2) - 0.05
    # A dead (zero) neuron changes nothing; flipping the signs negates φ: −a²b²/(a² + b²).
    with_dead = np.vstack([thetas, np.zeros(2)])
    assert abs(local_margin_guarantee(x, y, with_dead, signs=[-1, 1, 1]) - expected) < 1e-12
    assert abs(local_margin_guarantee(x, y, thetas, signs=[1, -1]) + expected) < 1e-12


def test_local_guarantee_rejects_non_unit_rows():
    x = np.eye(2)
    y = np.array([1.0, -1.0])
    with pytest.raises(ValueError, match="unit"):
        local_margin_guarantee(x, y, np.array([[2.0, 0.0]]), signs=[1])


def test_global_estimate_closed_form_1d():
    # d = 1: the sphere is {−1, +1}, so the dictionary LP is exact (ε = 0). With x = (1, −1/2),
    # y = (+1, −1): margins (ν₊, −ν₋/4); max min over |ν₊| + |ν₋| ≤ 1 is 1/(1 + 4) = 0.2.
    res = global_margin_estimate(np.array([[1.0], [-0.5]]), np.array([1.0, -1.0]))
    assert abs(res.value - 0.2) < 1e-12
    assert res.covering_radius == 0.0
    assert abs(res.upper_bound - 0.2) < 1e-12
    assert abs(np.abs(res.weights).sum() - 1.0) < 1e-12


def test_global_estimate_dominates_local_guarantee():
    x, y = appendix_a_synthetic(n=60, seed=0)
    coarse = global_margin_estimate(x, y, num_directions=162)
    # Atoms of the coarse optimum, used as neurons with their signs: the local guarantee (max
    # over the simplex on those atoms) then reproduces the coarse value exactly.
    atoms = np.abs(coarse.weights) > 1e-12
    thetas, signs = coarse.directions[atoms], np.sign(coarse.weights[atoms])
    local = local_margin_guarantee(x, y, thetas, signs)
    assert coarse.value > 0.0
    assert abs(local - coarse.value) < 1e-9
    # Random neurons (plus a dead one) included in a finer dictionary: global ≥ local.
    rng = np.random.default_rng(5)
    rand = rng.standard_normal((6, 3))
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    rand = np.vstack([rand, np.zeros(3)])
    rand_signs = np.array([1, -1, 1, -1, 1, -1, 1.0])
    local_rand = local_margin_guarantee(x, y, rand, rand_signs)
    fine = global_margin_estimate(x, y, num_directions=642, extra_directions=rand)
    assert fine.value >= local_rand - 1e-12
    assert fine.value >= local - 1e-12


@pytest.mark.parametrize("d, sizes", [(2, (16, 32, 64, 128)), (3, (42, 162, 642, 2562))])
def test_global_estimate_monotone_under_refinement(d, sizes):
    if d == 3:
        x, y = appendix_a_synthetic(n=60, seed=1)
    else:
        rng = np.random.default_rng(6)
        x = rng.uniform(-1, 1, size=(40, 2))
        x /= np.linalg.norm(x, axis=1).max()
        y = np.where(np.abs(x[:, 0]) > np.abs(x[:, 1]), 1.0, -1.0)
    results = [global_margin_estimate(x, y, num_directions=k) for k in sizes]
    values = [r.value for r in results]
    assert [r.num_directions for r in results] == list(sizes)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > values[0]
    # The finest value stays below every coarse level's upper bound (Lipschitz bound).
    assert all(values[-1] <= r.upper_bound + 1e-12 for r in results)


@pytest.mark.parametrize("d, k", [(2, 40), (3, 162)])
def test_sphere_directions_nested_and_covering_radius(d, k):
    dirs, eps = sphere_directions(d, k)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-14)
    finer, eps_fine = sphere_directions(d, 4 * k - 6 if d == 3 else 2 * k)
    np.testing.assert_allclose(finer[: len(dirs)] if d == 3 else finer[::2], dirs, atol=1e-14)
    assert eps_fine < eps
    # ε is the covering radius: no random point is farther from the dictionary, and the
    # farthest of many random points gets close to it.
    pts = np.random.default_rng(0).standard_normal((20000, d))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.max(pts @ dirs.T, axis=1)))
    assert dist.max() <= eps + 1e-12
    assert dist.max() >= 0.9 * eps


def test_sphere_directions_high_dim_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dirs, eps = sphere_directions(5, 50, seed=1)
    assert any("random directions" in str(w.message) for w in caught)
    assert dirs.shape == (50, 5)
    assert np.isnan(eps)


# ------------------------------------------------------------------------------------------------
# The NTK reference of Figure 1(a) (gradflow.ntk)
# ------------------------------------------------------------------------------------------------


def test_ntk_features_match_frozen_activation():
    """⟨v, ψ(x)⟩ with ψ flattened (m, d) row-major is the FrozenActivation predictor at v."""
    model = gf.TwoLayerSquaredReLU(3, 7, key=jax.random.PRNGKey(2))
    x = np.random.default_rng(0).normal(size=(5, 3))
    v = np.random.default_rng(1).normal(size=(7, 3))
    psi = ntk_features(np.asarray(model.w), np.asarray(model.signs, float), x)
    with gf.x64():
        direct = np.asarray(gf.linearize(model, init=v)(jax.numpy.asarray(x)))
    np.testing.assert_allclose(psi @ v.ravel(), direct, rtol=1e-10)
    np.testing.assert_allclose(squared_relu_surface(model.w, model.signs, x, v, chunk=2), direct, rtol=1e-10)


def test_squared_relu_surface_is_the_network_in_chunks():
    """Φ(p) = Σ_j s_j relu(⟨w_j, p⟩)² in numpy chunks equals the JAX network, whatever the chunk."""
    model = gf.TwoLayerSquaredReLU(3, 9, key=jax.random.PRNGKey(4), signs="random")
    pts = np.random.default_rng(2).normal(size=(11, 3))
    with gf.x64():
        direct = np.asarray(model(jax.numpy.asarray(pts)))
    for chunk in (1, 4, 2048):
        np.testing.assert_allclose(squared_relu_surface(model.w, model.signs, pts, chunk=chunk), direct, rtol=1e-12)


def test_ntk_max_margin_is_the_svm_on_the_features():
    """v̄ (m, d) has unit norm, attains γ through the JAX frozen-activation model, and no other
    unit v does better (random directions and the initial w itself)."""
    x, y = appendix_a_synthetic(n=40)
    model = gf.TwoLayerSquaredReLU(3, 16, key=jax.random.PRNGKey(0), signs="random", init_scale=0.5)
    v_bar, gamma = ntk_max_margin(model, x, y)
    assert v_bar.shape == (16, 3) and np.linalg.norm(v_bar) == pytest.approx(1.0, abs=1e-12) and gamma > 0
    with gf.x64():
        out = np.asarray(gf.linearize(model, init=v_bar)(jax.numpy.asarray(x)))
    assert np.min(y * out) == pytest.approx(gamma, rel=1e-8)
    psi = ntk_features(np.asarray(model.w), np.asarray(model.signs, float), x)
    others = np.random.default_rng(3).normal(size=(2000, psi.shape[1]))
    others = np.vstack([others, np.asarray(model.w).ravel()])
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    assert np.max(np.min(y[None, :] * (others @ psi.T), axis=1)) < gamma
