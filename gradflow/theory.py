r"""The paper's Section 4 predictions, measured on a trajectory (Ji & Telgarsky, 2020).

Every function here reads a :class:`~gradflow.FlowResult` run with ``save_params=True`` (its
``diagnostics["params_flat"]`` of shape (T, k) holds W at each save point, flattened by
:func:`jax.flatten_util.ravel_pytree` of the trainable parameters) together with a model of the
same architecture (``like_model``) that tells how to unflatten a row, and/or a model itself.

* **Theorem 4.1** (alignment): for locally Lipschitz gradients, the angle θ_t between W_t and
  −∇L(W_t) tends to 0 — :func:`alignment_report`.
* **Proposition 4.4** (deep linear): A_j/‖A_j‖ → v_j v_{j−1}ᵀ (rank one, adjacent layers aligned)
  and A_L⋯A_1/‖A_L⋯A_1‖ → ūᵀ, the hard-margin SVM direction — :func:`deep_linear_alignment`,
  :func:`direction_angle`, and for the one-layer case the explicit bound
  :func:`linear_angle_bound`.
* **Proposition 4.6** (shallow squared ReLU, eq. (4.5)): s_j = ‖w_j‖²/‖W‖² → s̄ ∈ Δ_m,
  θ_j = w_j/‖w_j‖ → θ̄_j, local and (under a covering condition) global margin guarantees —
  :func:`squared_relu_neurons`, :func:`covering`, :func:`squared_relu_guarantees`.
* **Section 1.2** (saliency maps): with alignment, input gradients ∇_x Φ(x; W_t) converge in
  direction — :func:`saliency`, :func:`saliency_drift`.

All computations run in float64 (numpy, or JAX inside :func:`gradflow.precision.x64`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from . import models
from .errors import InvalidTypeError, bad_argument
from .interop import as_gradflow_model, unwrap, wrap
from .maxmargin import global_margin_estimate, local_margin_guarantee, sphere_directions, svm_direction
from .params import combine, partition
from .precision import x64

__all__ = [
    "alignment_report",
    "covering",
    "deep_linear_alignment",
    "direction_angle",
    "has_locally_lipschitz_gradients",
    "leaves_at",
    "linear_angle_bound",
    "model_at",
    "saliency",
    "saliency_drift",
    "squared_relu_guarantees",
    "squared_relu_neurons",
]

FloatArray = npt.NDArray[np.float64]


# ------------------------------------------------------------------------------------------------
# Rebuilding W_t from the saved rows
# ------------------------------------------------------------------------------------------------


def _params_flat(result: Any) -> FloatArray:
    diags = getattr(result, "diagnostics", None)
    if not isinstance(diags, dict):
        raise InvalidTypeError(f"result: expected a gradflow FlowResult, got {type(result).__name__}.")
    if "params_flat" not in diags:
        raise bad_argument(
            "result",
            "has no saved parameters (diagnostics['params_flat'])",
            "Run simulate_flow(..., save_params=True).",
        )
    return np.asarray(diags["params_flat"], dtype=np.float64)


def _leaf_shapes(like_model: Any) -> list[tuple[int, ...]]:
    with x64():
        params, _ = partition(wrap(like_model))
        return [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)]


def leaves_at(result: Any, like_model: Any) -> list[FloatArray]:
    """The trainable leaves of W at every save point: a list of arrays of shape (T, *leaf_shape).

    ``ravel_pytree`` concatenates the raveled leaves in ``tree_leaves`` order, so slicing each
    row of ``params_flat`` by the leaf sizes inverts it (pure numpy, float64).
    """
    flat = _params_flat(result)
    shapes = _leaf_shapes(like_model)
    sizes = [math.prod(s) for s in shapes]
    if flat.ndim != 2 or flat.shape[1] != sum(sizes):
        raise bad_argument(
            "like_model",
            f"has {sum(sizes)} trainable parameters but result.params_flat has shape {flat.shape}",
            "Pass a model of the architecture that produced the result.",
        )
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(flat[:, start : start + size].reshape((flat.shape[0], *shape)))
        start += size
    return out


def model_at(result: Any, like_model: Any, index: int) -> Any:
    """``like_model`` with its trainable parameters replaced by W at save point ``index`` (any
    model type gradflow accepts; returned as the same type)."""
    flat = _params_flat(result)
    with x64():
        params, static = partition(wrap(like_model))
        _, unravel = jax.flatten_util.ravel_pytree(params)
        return unwrap(combine(unravel(jnp.asarray(flat[index], dtype=jnp.float64)), static))


def _unit(v: FloatArray, axis: int = -1) -> FloatArray:
    """v/‖v‖ along ``axis``; exactly 0 where ‖v‖ = 0 (the paper's convention θ_j = 0)."""
    nrm = np.linalg.norm(v, axis=axis, keepdims=True)
    return np.divide(v, nrm, out=np.zeros_like(v), where=nrm > 0)


def _angle(cos: FloatArray) -> FloatArray:
    return np.arccos(np.clip(cos, -1.0, 1.0))


def _is_instance(model: Any, name: str) -> bool:
    cls = getattr(models, name, None)
    return cls is not None and isinstance(model, cls)


# ------------------------------------------------------------------------------------------------
# Linear predictors and deep linear networks (Proposition 4.4)
# ------------------------------------------------------------------------------------------------


def direction_angle(result: Any, u_bar: npt.ArrayLike, like_model: Any | None = None) -> FloatArray:
    """Angle ∠(u_t, ū) ∈ [0, π] at every save point, shape (T,).

    ``u_t`` is the linear predictor: W_t itself for :class:`~gradflow.Linear` (or when
    ``like_model`` is None and W is a vector in R^d), the end-to-end product A_L⋯A_1 for
    :class:`~gradflow.DeepLinear`. Proposition 4.4 (and Soudry et al. 2017 for one layer):
    u_t/‖u_t‖ → ū, so the angle → 0; the angle is signed (→ π would mean −ū).
    """
    u_bar = _unit(np.asarray(u_bar, dtype=np.float64))
    if like_model is not None and _is_instance(like_model, "DeepLinear"):
        u = _products(leaves_at(result, like_model))
    else:
        u = _params_flat(result)
    if u.shape[1] != u_bar.shape[0]:
        raise bad_argument(
            "u_bar",
            f"has dimension {u_bar.shape[0]} but the predictor has {u.shape[1]}",
            "Pass ū of the data's dimension (and like_model for a DeepLinear).",
        )
    return _angle(_unit(u) @ u_bar)


def linear_angle_bound(result: Any, gamma: float) -> FloatArray:
    r"""Upper bound on ∠(w_t, ū) for a **linear** predictor under the exponential loss, shape (T,).

    For any w with positive margin γ(w) = min_i y_i⟨x_i, w⟩/‖w‖:

        cos ∠(w, ū) ≥ γ(w)/γ.                                                        (i)

    (u* = ū/γ is the projection of 0 onto the convex set {u: y_i⟨x_i,u⟩ ≥ 1}, so every u' in it has
    ⟨u', u*⟩ ≥ ‖u*‖²; take u' = w/min_i y_i⟨x_i,w⟩, ‖u'‖ = 1/γ(w).) Along the flow, with
    α = ln(1/L) (exponential loss):

    * min_i p_i ≥ α, since L = Σ e^{−p_i} ≥ e^{−min p_i};
    * dw/dα = −∇L·L/‖∇L‖², and ‖∇L‖ ≥ ⟨−∇L, ū⟩ = Σ e^{−p_i} y_i⟨x_i, ū⟩ ≥ γL, so
      d‖w‖/dα ≤ L/‖∇L‖ ≤ 1/γ, i.e. ‖w_t‖ ≤ ‖w_0‖ + (α_t − α_0)/γ.

    Hence γ(w_t) ≥ α_t/‖w_t‖ ≥ γ α_t/(α_t + c₀) with c₀ = γ‖w_0‖ − α_0 ≥ 0, and by (i)

        ∠(w_t, ū) ≤ arccos(α_t/(α_t + c₀)) ≈ √(2c₀/α_t).                             (ii)

    This is a guarantee with constants from W_0 alone, O(1/√ln t); the true rate is Θ(1/ln t)
    (Soudry et al., 2017: w_t = ū ln t/γ + ρ + o(1)), so (ii) is loose but cannot be violated
    by a correct flow. Rows with α_t ≤ 0 get π (no information).

    Args:
        result: a flow of a :class:`~gradflow.Linear` model with ``save_params=True`` and the
            exponential loss.
        gamma: the hard margin γ of :func:`gradflow.maxmargin.svm_direction`.
    """
    loss = result.config.get("loss") if hasattr(result, "config") else None
    if loss is not None and loss != "exponential":
        raise bad_argument("result", f"used the {loss} loss", "The bound is derived for loss='exponential'.")
    if not gamma > 0:
        raise bad_argument("gamma", f"must be > 0, got {gamma}", "Pass svm_direction(x, y).margin.")
    w = _params_flat(result)
    alpha = np.asarray(result.diagnostics["alpha"], dtype=np.float64)
    c0 = max(gamma * float(np.linalg.norm(w[0])) - float(alpha[0]), 0.0)
    ratio = np.where(alpha > 0, alpha / np.maximum(alpha + c0, 1e-300), -1.0)
    return _angle(ratio)


def _products(layers: list[FloatArray]) -> FloatArray:
    """End-to-end A_L⋯A_1 at every save point: (T, d) from layers (T, h_j, h_{j−1})."""
    out = layers[-1]  # (T, 1, h)
    for a in reversed(layers[:-1]):
        out = out @ a
    return out[:, 0, :]


def deep_linear_alignment(
    result: Any, like_model: Any, x: npt.ArrayLike, y: npt.ArrayLike
) -> dict[str, FloatArray | float]:
    r"""Proposition 4.4 measured along a deep linear flow W_t = (A_L, …, A_1).

    The proposition: A_j/‖A_j‖ → v_j v_{j−1}ᵀ (every layer becomes rank one, and the right
    singular vector of A_{j+1} equals the left singular vector of A_j), and the product
    A_L⋯A_1/‖A_L⋯A_1‖ → ūᵀ with ū = argmax_{‖u‖≤1} min_i y_i⟨x_i, u⟩.

    Returns a dict of arrays over the T save points:

    * ``rank_one`` (T, L): σ₁(A_j)/‖A_j‖_F ∈ (0, 1], → 1 (exactly 1 for the row vector A_L);
    * ``adjacent_alignment`` (T, L−1): |⟨v_{j+1}, u_j⟩|, the top right singular vector of A_{j+1}
      against the top left singular vector of A_j (both in R^{h_j}), → 1;
    * ``product_angle`` (T,): ∠(A_L⋯A_1, ū), → 0;
    * ``layer_norms`` (T, L): ‖A_j‖_F (Lemma E.1: all → ∞ with equal rates);
    * ``accuracy`` (T,): ln(n/L); ``u_bar`` (d,), ``gamma``: the SVM direction and margin.
    """
    if not _is_instance(like_model, "DeepLinear"):
        raise InvalidTypeError(f"like_model: expected a gradflow.DeepLinear, got {type(like_model).__name__}.")
    layers = leaves_at(result, like_model)  # A_1 … A_L, each (T, out, in)
    svm = svm_direction(x, y)
    num = len(layers)
    t = layers[0].shape[0]
    rank_one = np.empty((t, num))
    norms = np.empty((t, num))
    left: list[FloatArray] = []
    right: list[FloatArray] = []
    for j, a in enumerate(layers):
        u, s, vt = np.linalg.svd(a, full_matrices=False)  # batched over T
        fro = np.sqrt(np.sum(s * s, axis=1))
        norms[:, j] = fro
        rank_one[:, j] = np.divide(s[:, 0], fro, out=np.zeros_like(fro), where=fro > 0)
        left.append(u[:, :, 0])  # (T, out)
        right.append(vt[:, 0, :])  # (T, in)
    adjacent = np.empty((t, num - 1))
    for j in range(num - 1):
        adjacent[:, j] = np.abs(np.sum(right[j + 1] * left[j], axis=1))
    prod = _products(layers)
    return {
        "accuracy": np.asarray(result.diagnostics["accuracy"], dtype=np.float64),
        "rank_one": rank_one,
        "adjacent_alignment": adjacent,
        "product_angle": _angle(_unit(prod) @ svm.direction),
        "layer_norms": norms,
        "u_bar": svm.direction,
        "gamma": svm.margin,
    }


# ------------------------------------------------------------------------------------------------
# Two-homogeneous squared-ReLU networks (Proposition 4.6, eq. (4.5))
# ------------------------------------------------------------------------------------------------


def _squared_relu_w(result: Any, like_model: Any) -> FloatArray:
    if not _is_instance(like_model, "TwoLayerSquaredReLU"):
        raise InvalidTypeError(f"like_model: expected a gradflow.TwoLayerSquaredReLU, got {type(like_model).__name__}.")
    (w,) = leaves_at(result, like_model)  # the int8 signs are static: w is the only leaf
    return w


def squared_relu_neurons(result: Any, like_model: Any) -> dict[str, FloatArray]:
    r"""Per-neuron mass and direction along a squared-ReLU flow (Proposition 4.6.1).

    ``s`` (T, m): s_j(t) = ‖w_j(t)‖²/‖W_t‖² ∈ Δ_m, → s̄;
    ``theta`` (T, m, d): θ_j(t) = w_j(t)/‖w_j(t)‖ (0 when w_j = 0), → θ̄_j;
    ``accuracy`` (T,): ln(n/L); ``signs`` (m,): the fixed output signs.
    """
    w = _squared_relu_w(result, like_model)
    sq = np.sum(w * w, axis=2)
    total = np.sum(sq, axis=1, keepdims=True)
    return {
        "accuracy": np.asarray(result.diagnostics["accuracy"], dtype=np.float64),
        "s": np.divide(sq, total, out=np.zeros_like(sq), where=total > 0),
        "theta": _unit(w, axis=2),
        "signs": np.asarray(like_model.signs, dtype=np.float64),
    }


def covering(result: Any, like_model: Any, eps: float | None = None, *, num_directions: int = 2562) -> dict[str, Any]:
    r"""The covering condition of Proposition 4.6.2 at every save point t₀.

    The condition holds at (t₀, ε) when

        max_j ‖θ_j(t₀) − θ̄_j‖ ≤ ε   and
        max_{θ' ∈ S^{d−1}} max{ min_{s_j=+1} ‖θ_j(t₀) − θ'‖, min_{s_j=−1} ‖θ_j(t₀) − θ'‖ } ≤ ε,

    i.e. the directions of each sign class (the paper's even and odd j for s_j = (−1)^j) form an
    ε-net of the sphere at t₀, and no direction moves more than ε afterwards. θ̄_j is taken as the
    last saved θ_j (the limit is not available at finite time); dead neurons (w_j = 0) are left out
    of the nets.

    The sphere maximum is taken over the grid of :func:`gradflow.maxmargin.sphere_directions`
    (``num_directions``); by the triangle inequality the true maximum exceeds the grid maximum by at
    most the grid's covering radius r, so ``eps = max(drift, net_grid + r)`` is a rigorous
    ε for the grid part (NaN for d > 3, where the grid is random and r unknown).

    Returns a dict with arrays over the T save points: ``drift`` max_j ‖θ_j(t) − θ_j(T)‖,
    ``net_positive`` / ``net_negative`` (grid maxima per sign class), ``eps_grid`` (the max of the
    three on the grid), ``eps`` (rigorous, grid radius added), ``grid_radius`` r, ``best_index`` and
    ``best_eps`` (the save point with the smallest ``eps`` and that value), and ``holds`` (T,)
    bool when ``eps`` (the target) is given.
    """
    nrn = squared_relu_neurons(result, like_model)
    theta, signs = nrn["theta"], nrn["signs"]
    d = theta.shape[2]
    grid, radius = sphere_directions(d, num_directions)
    final = theta[-1]
    drift = np.max(np.linalg.norm(theta - final[None], axis=2), axis=1)

    def net(mask: npt.NDArray[np.bool_]) -> FloatArray:
        out = np.full(theta.shape[0], np.inf)
        for t in range(theta.shape[0]):
            th = theta[t][mask]
            th = th[np.linalg.norm(th, axis=1) > 0]
            if th.shape[0] == 0:
                continue
            # ‖θ − g‖² = 2 − 2⟨θ, g⟩ for unit vectors: the nearest neuron maximizes ⟨θ, g⟩.
            best = np.max(grid @ th.T, axis=1)
            out[t] = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(np.min(best)))))
        return out

    pos = net(signs > 0)
    neg = net(signs < 0)
    eps_grid = np.maximum(drift, np.maximum(pos, neg))
    eps_true = np.maximum(drift, np.maximum(pos, neg) + radius)
    key = eps_true if np.isfinite(radius) else eps_grid
    best = int(np.argmin(key))
    out: dict[str, Any] = {
        "accuracy": nrn["accuracy"],
        "drift": drift,
        "net_positive": pos,
        "net_negative": neg,
        "eps_grid": eps_grid,
        "eps": eps_true,
        "grid_radius": float(radius),
        "best_index": best,
        "best_eps": float(key[best]),
    }
    if eps is not None:
        out["holds"] = key <= eps
    return out


def squared_relu_guarantees(
    result: Any,
    like_model: Any,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    num_directions: int = 2562,
) -> dict[str, Any]:
    r"""Proposition 4.6 at the end of a squared-ReLU flow: reached margin vs the guarantees.

    * ``margin``: the normalized margin min_i p_i(W_T)/‖W_T‖² at the last save point;
    * ``local``: the local guarantee max_{s∈Δ_m} min_i Σ_j s_j φ_ij(θ_j(T)) with the final
      directions (Prop. 4.6.1: the limit of ``margin`` equals this at θ̄); ``margin`` ≤ ``local``
      at any t, since s(t) is a feasible s;
    * ``global_value`` / ``global_upper_bound``: the dictionary LP estimate of the global max margin
      max_ν min_i y_i ∫ max(0, ⟨x_i, θ⟩)² dν(θ) (:func:`gradflow.maxmargin.global_margin_estimate`,
      dictionary extended by the final θ_j so that value ≥ local); the true global value lies in
      [value, upper_bound]; a finite-width net never exceeds it;
    * ``covering``: :func:`covering` at every save point, and ``implied_lower_bound``
      = ``global_value`` − 4·``covering["best_eps"]``, what Prop. 4.6.2 then guarantees for the
      limit margin (when the covering holds at some t₀ with that ε, and ‖x_i‖ ≤ 1).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = _squared_relu_w(result, like_model)
    signs = np.asarray(like_model.signs, dtype=np.float64)
    wt = w[-1]
    raw = y * ((np.maximum(0.0, x @ wt.T) ** 2) @ signs)
    margin = float(np.min(raw) / np.sum(wt * wt))
    theta = _unit(wt, axis=1)
    local = local_margin_guarantee(x, y, theta, signs)
    glob = global_margin_estimate(x, y, num_directions=num_directions, extra_directions=theta)
    cov = covering(result, like_model, num_directions=num_directions)
    return {
        "margin": margin,
        "local": float(local),
        "global_value": float(glob.value),
        "global_upper_bound": float(glob.upper_bound),
        "dictionary_radius": float(glob.covering_radius),
        "covering": cov,
        "implied_lower_bound": float(glob.value) - 4.0 * cov["best_eps"],
        "max_input_norm": float(np.max(np.linalg.norm(x, axis=1))),
    }


# ------------------------------------------------------------------------------------------------
# Alignment (Theorem 4.1)
# ------------------------------------------------------------------------------------------------

_SMOOTH = ("Linear", "DeepLinear", "TwoLayerSquaredReLU", "FrozenActivation")
_NONSMOOTH = ("ReLUMLP", "HomogeneousCNN")


def has_locally_lipschitz_gradients(model: Any) -> bool:
    """Whether every p_i(W) = y_iΦ(x_i; W) has a locally Lipschitz gradient in W (Theorem 4.1).

    True for the polynomial predictors — :class:`~gradflow.Linear`, :class:`~gradflow.DeepLinear`
    (polynomial in W), :class:`~gradflow.FrozenActivation` (linear in v) — and for
    :class:`~gradflow.TwoLayerSquaredReLU` (z ↦ max(0, z)² is C¹ with 2-Lipschitz derivative).
    False for ReLU networks (:class:`~gradflow.ReLUMLP`, :class:`~gradflow.HomogeneousCNN`), whose
    gradients jump across activation boundaries, and for unknown models.
    """
    return any(_is_instance(model, name) for name in _SMOOTH)


def alignment_report(result: Any, model: Any) -> dict[str, Any]:
    r"""Theorem 4.1: the angle θ_t between W_t and −∇L(W_t) → 0 when p_i have locally Lipschitz
    gradients.

    Returns ``final_angle`` θ_T (radians), ``mid_angle`` θ at the save point halfway in
    ln(n/L) between the first and last, ``decreased`` (θ_T < θ_mid), ``max_angle_last_half``,
    ``applies`` (:func:`has_locally_lipschitz_gradients`: the theorem covers this model) and
    ``verdict``: ``"asserted"`` when it applies (θ_t → 0 is a theorem, so a test may assert a
    decrease) or ``"reported only"`` (ReLU, CNN, unknown: the numbers are shown, not guaranteed).
    """
    angle = np.asarray(result.diagnostics["angle"], dtype=np.float64)
    acc = np.asarray(result.diagnostics["accuracy"], dtype=np.float64)
    if angle.size == 0:
        raise bad_argument("result", "has no save points", "Run a flow that saves at least one point.")
    half = 0.5 * (acc[0] + acc[-1])
    mid = int(np.searchsorted(acc, half))
    mid = min(mid, angle.size - 1)
    applies = has_locally_lipschitz_gradients(model)
    return {
        "model": type(model).__name__,
        "applies": applies,
        "verdict": "asserted" if applies else "reported only",
        "final_angle": float(angle[-1]),
        "mid_angle": float(angle[mid]),
        "decreased": bool(angle[-1] < angle[mid]),
        "max_angle_last_half": float(np.max(angle[mid:])),
        "final_accuracy": float(acc[-1]),
    }


# ------------------------------------------------------------------------------------------------
# Saliency maps (Section 1.2)
# ------------------------------------------------------------------------------------------------


def _saliency_fn(static: Any, unravel: Any, output_index: int | None):
    def phi(flat: jax.Array, xi: jax.Array) -> jax.Array:
        out = combine(unravel(flat), static)(xi[None])[0]
        return out if output_index is None else out[output_index]

    def one(flat: jax.Array, xs: jax.Array) -> jax.Array:
        g = jax.vmap(jax.grad(phi, argnums=1), in_axes=(None, 0))(flat, xs)
        nrm = jnp.sqrt(jnp.sum(g * g, axis=tuple(range(1, g.ndim)), keepdims=True))
        return jnp.where(nrm > 0, g / jnp.where(nrm > 0, nrm, 1.0), 0.0)

    return one


def saliency(model: Any, x_examples: npt.ArrayLike, output_index: int | None = None) -> FloatArray:
    r"""Normalized saliency maps ∇_x Φ(x_i; W)/‖∇_x Φ(x_i; W)‖, shape (n, *input_shape).

    Section 1.2: saliency maps are input gradients; with alignment (Theorem 4.1) and directional
    convergence they converge in direction, so the normalized maps stop changing. For a linear
    predictor ∇_x⟨w, x⟩ = w, so every map equals w/‖w‖ exactly. A zero gradient gives a zero map.
    ``output_index`` picks one output of a multiclass model.
    """
    with x64():
        xs = jnp.asarray(np.asarray(x_examples, dtype=np.float64))
        params, static = partition(as_gradflow_model(model, xs))
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        return np.asarray(_saliency_fn(static, unravel, output_index)(flat, xs))


def saliency_drift(
    result: Any, like_model: Any, x_examples: npt.ArrayLike, output_index: int | None = None
) -> dict[str, FloatArray]:
    r"""How much the normalized saliency maps still move along a flow (Section 1.2).

    With S_t(x_i) = ∇_x Φ(x_i; W_t)/‖·‖ at the save points, returns

    * ``step`` (T−1, n): ∠(S_{t_k}(x_i), S_{t_{k+1}}(x_i)), the angular change between
      consecutive save points;
    * ``to_final`` (T, n): ∠(S_{t_k}(x_i), S_{t_T}(x_i));
    * ``accuracy`` (T,): ln(n/L) at the save points (``step`` belongs to the later point);
    * ``maps`` (T, n, *input_shape): the maps themselves.

    When W_t/‖W_t‖ converges and Φ is homogeneous, ∇_xΦ(x; W_t)/‖·‖ = ∇_xΦ(x; W̃_t)/‖·‖ converges
    too (wherever it is continuous in W), so both angles → 0.
    """
    flat = _params_flat(result)
    with x64():
        xs = jnp.asarray(np.asarray(x_examples, dtype=np.float64))
        params, static = partition(as_gradflow_model(like_model, xs))
        _, unravel = jax.flatten_util.ravel_pytree(params)
        one = _saliency_fn(static, unravel, output_index)
        maps = np.asarray(jax.jit(jax.vmap(one, in_axes=(0, None)))(jnp.asarray(flat), xs))
    t, n = maps.shape[0], maps.shape[1]
    m2 = maps.reshape(t, n, -1)
    step = _angle(np.sum(m2[1:] * m2[:-1], axis=2))
    to_final = _angle(np.sum(m2 * m2[-1][None], axis=2))
    return {
        "accuracy": np.asarray(result.diagnostics["accuracy"], dtype=np.float64),
        "step": step,
        "to_final": to_final,
        "maps": maps,
    }
