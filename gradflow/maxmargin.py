"""Reference max-margin solvers (plain numpy/scipy, float64).

These are the targets that gradient flow is compared against (Ji & Telgarsky, "Directional
convergence and alignment in deep learning", Section 4.2):

* **Proposition 4.4** (deep linear networks). The end-to-end product ``A_L ⋯ A_1`` converges in
  direction to the hard-margin linear SVM direction *without intercept*

      ū = argmax_{‖u‖ ≤ 1} min_i y_i ⟨x_i, u⟩,        γ = min_i y_i ⟨x_i, ū⟩,

  computed by :func:`svm_direction` (a constant feature in ``x`` plays the role of a bias).

* **Proposition 4.6** (shallow squared-ReLU networks, eq. (4.5)). With
  ``φ_ij(θ) = y_i s_j max(0, ⟨θ, x_i⟩)²`` and fixed output signs ``s_j ∈ {±1}``, the limiting
  normalized margin for limiting unit directions ``θ̄_j`` is a max-min over the simplex
  (:func:`local_margin_guarantee`), and the global max-margin over signed measures on the
  sphere is estimated by an LP over a dictionary of directions (:func:`global_margin_estimate`).

None of this is compiled or differentiated; it is run once per data set to get reference numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog, nnls

__all__ = [
    "MaxMarginResult",
    "GlobalMarginResult",
    "svm_direction",
    "kkt_residual",
    "local_margin_guarantee",
    "global_margin_estimate",
    "sphere_directions",
]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]


# ------------------------------------------------------------------------------------------------
# Linear hard-margin SVM through the origin (Proposition 4.4)
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MaxMarginResult:
    """Hard-margin linear SVM without intercept.

    Attributes:
        direction: ū, the unit max-margin direction, shape ``(d,)``, ``‖ū‖ = 1``.
        margin: γ = min_i y_i ⟨x_i, ū⟩ > 0.
        dual: α ≥ 0, shape ``(n,)``: the Lagrange multipliers of the *unnormalized* problem
            ``min ½‖u‖² s.t. y_i⟨x_i, u⟩ ≥ 1``, whose solution is ``u* = ū/γ = Σ_i α_i y_i x_i``;
            hence ``Σ_i α_i = ‖u*‖² = 1/γ²``, and ``γ² α`` is a probability vector on the support.
        support: indices ``i`` with ``α_i > 0`` (sorted).
    """

    direction: FloatArray
    margin: float
    dual: FloatArray
    support: npt.NDArray[np.int64]


def _check_binary(x: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Validate ``x`` of shape (n, d) and labels ``y`` in {−1, +1}; return float64 copies."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("x is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains non-finite values")
    if not np.all(np.abs(y) == 1.0):
        bad = np.unique(y[np.abs(y) != 1.0])[:5]
        raise ValueError(f"labels must be ±1 (float); found e.g. {bad.tolist()}")
    return x, y


def _separable_through_origin(z: FloatArray) -> bool:
    """LP feasibility (HiGHS): is there u with z_i·u ≥ 1 for all i?

    By homogeneity this is equivalent to strict linear separability through the origin
    (∃u: y_i⟨x_i, u⟩ > 0 ∀i), with ``z_i = y_i x_i``.
    """
    d = z.shape[1]
    res = linprog(
        np.zeros(d),
        A_ub=-z,
        b_ub=-np.ones(z.shape[0]),
        bounds=[(None, None)] * d,
        method="highs",
    )
    if res.status == 0:
        return True
    if res.status == 2:  # infeasible
        return False
    raise RuntimeError(f"separability LP failed: {res.message}")


def _ldp_nnls(z: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Least-distance programming ``min ½‖u‖² s.t. z u ≥ 1`` by Lawson–Hanson NNLS.

    Lawson & Hanson (1974, Ch. 23): with ``E = [zᵀ; 1ᵀ]`` (shape (d+1, n)) and
    ``f = e_{d+1}``, solve ``w = argmin_{w ≥ 0} ‖E w − f‖``; with ``r = E w − f`` the LDP
    solution is ``u = −r_{1:d} / r_{d+1}`` and the multipliers are ``α = w / (1 − Σw)``
    (so that ``u = zᵀα``). ``r = 0`` would mean infeasible (ruled out beforehand).
    """
    n, d = z.shape
    e = np.vstack([z.T, np.ones((1, n))])
    f = np.zeros(d + 1)
    f[d] = 1.0
    w, _ = nnls(e, f, maxiter=max(50 * n, 1000))
    r = e @ w - f
    if not r[d] < 0.0:  # r_{d+1} = Σw − 1 < 0 whenever the problem is feasible
        raise RuntimeError("NNLS reformulation of the SVM failed (degenerate residual)")
    u = -r[:d] / r[d]
    alpha = w / (-r[d])
    return u, alpha


def _kkt_raw(z: FloatArray, u: FloatArray, alpha: FloatArray) -> float:
    """Scale-free KKT residual of ``min ½‖u‖² s.t. z u ≥ 1`` (see :func:`kkt_residual`)."""
    s = z @ u - 1.0  # slacks, ≥ 0 when feasible
    unorm2 = float(u @ u)
    if unorm2 == 0.0:
        return float("inf")
    beta = alpha / unorm2  # normalized multipliers: Σβ = 1 at the optimum
    primal = max(0.0, -float(s.min()))
    dual = max(0.0, -float(alpha.min()) / unorm2)
    compl = float(np.max(np.abs(beta * s)))
    station = float(np.linalg.norm(u - z.T @ alpha)) / np.sqrt(unorm2)
    return max(primal, dual, compl, station)


def _polish(z: FloatArray, u0: FloatArray, alpha0: FloatArray, max_iter: int = 50) -> tuple[FloatArray, FloatArray]:
    """Active-set polish: solve the KKT equalities on a guessed support exactly.

    On the support ``S``: ``u`` = the minimum-norm solution of ``z_S u = 1`` (all support
    constraints tight, ``u`` in the row space of ``z_S``) and ``α_S`` solves ``z_Sᵀ α_S = u``
    (stationarity), both by :func:`numpy.linalg.lstsq`. Accept when ``α_S > 0`` and ``z_i u ≥ 1`` off ``S``; otherwise drop the most negative
    multiplier or add the most violated constraint and repeat. Returns the best iterate by
    KKT residual (the unpolished input if polishing never improves it).
    """
    n = z.shape[0]
    best_u, best_a = u0, alpha0
    best_res = _kkt_raw(z, u0, alpha0)
    support = np.flatnonzero(alpha0 > 1e-12 * float(alpha0.max()))
    if support.size == 0:
        support = np.argsort(z @ u0)[:1]
    seen: set[tuple[int, ...]] = set()
    for _ in range(max_iter):
        key = tuple(support.tolist())
        if key in seen:
            break
        seen.add(key)
        zs = z[support]
        # u: minimum-norm solution of z_S u = 1 (lies in the row space of z_S); then α_S with
        # z_Sᵀ α_S = u. Working with z_S rather than the Gram z_S z_Sᵀ avoids squaring its
        # condition number (≈ 1/γ² for small-margin data).
        u, _, rank, _ = np.linalg.lstsq(zs, np.ones(support.size), rcond=None)
        a_s = np.linalg.lstsq(zs.T, u, rcond=None)[0]
        if rank < support.size and np.any(a_s <= 0.0):
            # Degenerate support (more tight points than dimensions): α is not unique and the
            # minimum-norm α may be negative while a non-negative one exists.
            a_nn, rnorm = nnls(zs.T, u, maxiter=max(50 * support.size, 1000))
            if rnorm <= 1e-12 * np.linalg.norm(u):
                a_s = a_nn
                keep = a_s > 0.0
                support, a_s = support[keep], a_s[keep]
        alpha = np.zeros(n)
        alpha[support] = a_s
        res = _kkt_raw(z, u, alpha)
        if res < best_res:
            best_u, best_a, best_res = u, alpha, res
        neg = a_s <= 0.0
        if np.any(neg):
            support = np.delete(support, int(np.argmin(a_s)))
            if support.size == 0:
                break
            continue
        slack = z @ u - 1.0
        slack[support] = np.inf
        worst = int(np.argmin(slack))
        if slack[worst] < -1e-13:
            support = np.sort(np.append(support, worst))
            continue
        break
    alpha = np.where(best_a > 0.0, best_a, 0.0)
    if _kkt_raw(z, best_u, alpha) <= best_res:
        best_a = alpha
    return best_u, best_a


def svm_direction(x: ArrayLike, y: ArrayLike) -> MaxMarginResult:
    """Hard-margin linear SVM through the origin (no intercept).

    Solves ``ū = argmax_{‖u‖ ≤ 1} min_i y_i ⟨x_i, u⟩`` (unique when the data are separable), via
    the equivalent ``u* = argmin ½‖u‖² s.t. y_i⟨x_i, u⟩ ≥ 1``, ``ū = u*/‖u*‖``,
    ``γ = 1/‖u*‖``. Its dual is ``max_{α ≥ 0} Σα_i − ½‖Σ α_i y_i x_i‖²`` with
    ``u* = Σ α_i y_i x_i``.

    Solver: the primal is a *least-distance program*, which Lawson & Hanson reduce to a single
    non-negative least-squares problem; :func:`scipy.optimize.nnls` (an active-set
    Lawson–Hanson method, well kept in scipy) solves it and returns exact zeros off the active
    set, i.e. a clean support guess. Unlike L-BFGS-B on the dual it needs no step-size or
    tolerance tuning and is not slowed by the 1/γ² conditioning of small-margin data. The result
    is then *polished*: on the support ``S`` the KKT equalities ``y_i⟨x_i, u⟩ = 1 (i ∈ S)``,
    ``u = Σ_{i∈S} α_i y_i x_i`` are solved with :func:`numpy.linalg.lstsq`, with support
    updates (drop a negative multiplier / add a violated constraint) until all KKT conditions
    hold; the iterate with the smallest :func:`kkt_residual` is returned (typically ≲ 1e-12).

    Args:
        x: inputs, shape ``(n, d)``. Append a constant column yourself to emulate a bias.
        y: labels in {−1, +1}, shape ``(n,)``.

    Raises:
        ValueError: labels not ±1, bad shapes, or data not strictly linearly separable through
            the origin (checked by an LP feasibility problem solved with HiGHS).
    """
    x, y = _check_binary(x, y)
    z = y[:, None] * x
    if not _separable_through_origin(z):
        raise ValueError(
            "data are not linearly separable through the origin: no u with y_i<x_i, u> > 0 "
            "for all i (append a constant feature to allow a bias)"
        )
    u0, a0 = _ldp_nnls(z)
    u, alpha = _polish(z, u0, a0)
    norm = float(np.linalg.norm(u))
    direction = u / norm
    margin = float(np.min(z @ direction))
    support = np.flatnonzero(alpha > 0.0).astype(np.int64)
    return MaxMarginResult(direction=direction, margin=margin, dual=alpha, support=support)


def kkt_residual(x: ArrayLike, y: ArrayLike, result: MaxMarginResult) -> float:
    """Maximum violation of the KKT conditions of ``min ½‖u‖² s.t. y_i⟨x_i, u⟩ ≥ 1``.

    With ``u = ū/γ`` (``ū = result.direction``, ``γ = result.margin``), ``α = result.dual``,
    slacks ``s_i = y_i⟨x_i, u⟩ − 1`` and normalized multipliers ``β = α/‖u‖²`` (``Σβ = 1`` at the
    optimum) the residual is the maximum of

    * primal feasibility ``max(0, −min_i s_i)``,
    * dual feasibility ``max(0, −min_i β_i)``,
    * complementary slackness ``max_i |β_i s_i|``,
    * stationarity ``‖u − Σ_i α_i y_i x_i‖ / ‖u‖``,
    * consistency of the result: ``|‖ū‖ − 1|`` and ``|min_i y_i⟨x_i, ū⟩ − γ| / γ``.

    Every term is invariant under rescaling ``x``, so the number is comparable across data sets.
    """
    x, y = _check_binary(x, y)
    z = y[:, None] * x
    ubar = np.asarray(result.direction, dtype=np.float64)
    gamma = float(result.margin)
    if not gamma > 0.0:
        return float("inf")
    alpha = np.asarray(result.dual, dtype=np.float64)
    consistency = max(
        abs(float(np.linalg.norm(ubar)) - 1.0),
        abs(float(np.min(z @ ubar)) - gamma) / gamma,
    )
    return max(_kkt_raw(z, ubar / gamma, alpha), consistency)


# ------------------------------------------------------------------------------------------------
# Shallow squared-ReLU networks (Proposition 4.6, eq. (4.5))
# ------------------------------------------------------------------------------------------------


def _paper_signs(m: int) -> FloatArray:
    """Output signs ``s_j = (−1)^j`` for ``j = 1..m`` as in eq. (4.5): (−1, +1, −1, …)."""
    return np.where(np.arange(1, m + 1) % 2 == 0, 1.0, -1.0)


def _max_min_lp(phi: FloatArray, total_mass_eq: bool) -> tuple[float, FloatArray]:
    """``max_{w ≥ 0, Σw (=|≤) 1} min_i (phi @ w)_i`` by HiGHS; returns (value, w)."""
    n, k = phi.shape
    c = np.zeros(k + 1)
    c[-1] = -1.0  # maximise t
    a_ub = np.hstack([-phi, np.ones((n, 1))])  # t − Σ_j phi_ij w_j ≤ 0
    b_ub = np.zeros(n)
    mass = np.ones((1, k + 1))
    mass[0, -1] = 0.0
    kwargs: dict[str, object]
    if total_mass_eq:
        kwargs = {"A_eq": mass, "b_eq": np.ones(1)}
    else:
        a_ub = np.vstack([a_ub, mass])
        b_ub = np.append(b_ub, 1.0)
        kwargs = {}
    res = linprog(
        c,
        A_ub=a_ub,
        b_ub=b_ub,
        bounds=[(0.0, None)] * k + [(None, None)],
        method="highs",
        **kwargs,
    )
    if res.status != 0:
        raise RuntimeError(f"margin LP failed: {res.message}")
    return float(-res.fun), np.asarray(res.x[:k])


def local_margin_guarantee(
    x: ArrayLike,
    y: ArrayLike,
    thetas: ArrayLike,
    signs: ArrayLike | None = None,
) -> float:
    """Local guarantee of Proposition 4.6: ``max_{s ∈ Δ_m} min_i Σ_j s_j φ_ij(θ̄_j)``.

    Here ``φ_ij(θ) = y_i σ_j max(0, ⟨θ, x_i⟩)²`` (eq. (4.5)) with output signs ``σ_j`` and
    ``Δ_m`` the probability simplex. Solved as the LP (HiGHS)

        maximise t  s.t.  Σ_j s_j φ_ij(θ̄_j) ≥ t  ∀i,   s ≥ 0,   Σ_j s_j = 1.

    The paper prints ``min_i max_{s ∈ Δ_m}``, but the limit ``lim min_i p_i(W_t)/‖W_t‖²`` with
    ``s_j(t) = ‖w_j‖²/‖W‖² → s̄`` is the margin of the limiting network, i.e. the *max–min*
    (the network chooses one ``s`` for all points); ``min_i max_s`` would let each point pick
    its own neuron and is only an upper bound. This function returns the max–min.

    Args:
        x: inputs, shape ``(n, d)``.
        y: labels ±1, shape ``(n,)``.
        thetas: directions ``θ̄_j`` as rows, shape ``(m, d)``; each row must have norm 1 or be
            exactly zero (a dead neuron, ``φ_ij = 0``).
        signs: output signs ``σ_j ∈ {±1}``, shape ``(m,)``. Default ``None`` uses the paper's
            ``σ_j = (−1)^j`` with **1-based** ``j``, i.e. ``(−1, +1, −1, …)``; pass the signs
            your model actually uses if it indexes from 0.

    Returns:
        The max–min value (may be ≤ 0 if the directions cannot classify every point).
    """
    x, y = _check_binary(x, y)
    th = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    if th.ndim != 2 or th.shape[1] != x.shape[1]:
        raise ValueError(f"thetas must have shape (m, {x.shape[1]}), got {th.shape}")
    norms = np.linalg.norm(th, axis=1)
    if not np.all((np.abs(norms - 1.0) <= 1e-8) | (norms == 0.0)):
        raise ValueError("each row of thetas must be a unit vector or exactly zero")
    m = th.shape[0]
    sg = _paper_signs(m) if signs is None else np.asarray(signs, dtype=np.float64)
    if sg.shape != (m,) or not np.all(np.abs(sg) == 1.0):
        raise ValueError(f"signs must be ±1 with shape ({m},)")
    phi = y[:, None] * sg[None, :] * np.maximum(0.0, x @ th.T) ** 2
    value, _ = _max_min_lp(phi, total_mass_eq=True)
    return value


@dataclasses.dataclass(frozen=True)
class GlobalMarginResult:
    """Dictionary LP estimate of the global squared-ReLU max margin (Proposition 4.6, part 2).

    Attributes:
        value: ``max_ν min_i y_i Σ_k ν_k max(0, ⟨x_i, θ_k⟩)²`` over signed ν on the dictionary
            with ``Σ|ν_k| ≤ 1``: a lower bound on the margin over all signed measures.
        upper_bound: ``value + 2 ε max_i ‖x_i‖²``: an upper bound on the true value (moving every
            atom of an optimal measure to its nearest dictionary point changes each margin by
            at most ``2‖x_i‖² ε`` since ``θ ↦ max(0, ⟨x, θ⟩)²`` is ``2‖x‖²``-Lipschitz on the
            unit ball).
        directions: the dictionary ``θ_k``, shape ``(K, d)``, unit rows.
        weights: the optimal signed weights ``ν_k = ν⁺_k − ν⁻_k``, shape ``(K,)``.
        covering_radius: ε = max over the sphere of the Euclidean distance to the nearest
            dictionary direction (exact for the built-in grids, ``nan`` for random
            dictionaries, which makes ``upper_bound`` ``nan`` too).
    """

    value: float
    upper_bound: float
    directions: FloatArray
    weights: FloatArray
    covering_radius: float

    @property
    def num_directions(self) -> int:
        """Dictionary size K."""
        return int(self.directions.shape[0])


def _icosahedron() -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Unit icosahedron: 12 vertices and 20 outward-oriented triangular faces."""
    p = (1.0 + np.sqrt(5.0)) / 2.0
    v = np.array(
        [
            [-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0],
            [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
            [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1],
        ],
        dtype=np.float64,
    )  # fmt: skip
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = np.array(
        [
            [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
            [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
            [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
            [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
        ],
        dtype=np.int64,
    )  # fmt: skip
    return v, f


def _icosphere(level: int) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Geodesic grid: the icosahedron with each face split in 4, ``level`` times.

    Vertex counts ``10·4^level + 2`` (12, 42, 162, 642, 2562, 10242, …); the vertex set of a
    level contains that of every coarser level, in the same order (nested dictionaries).
    """
    verts, faces = _icosahedron()
    vlist = list(verts)
    for _ in range(level):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int, cache: dict[tuple[int, int], int] = cache) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                p = vlist[a] + vlist[b]
                vlist.append(p / np.linalg.norm(p))
                cache[key] = len(vlist) - 1
            return cache[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = np.array(new_faces, dtype=np.int64)
    return np.array(vlist), faces


def sphere_directions(d: int, num_directions: int, seed: int = 0) -> tuple[FloatArray, float]:
    """A dictionary of unit directions on ``S^{d−1}`` and its covering radius ε.

    * ``d = 1``: ``{−1, +1}`` (the whole sphere; ε = 0).
    * ``d = 2``: ``K = num_directions`` equally spaced angles ``2πk/K``; ε = 2 sin(π/(2K)).
      Nested when K is multiplied by an integer.
    * ``d = 3``: the vertices of the geodesic icosphere with the fewest vertices ≥
      ``num_directions`` (12, 42, 162, 642, 2562, 10242, …), nested across levels; ε is the
      exact largest spherical circumradius of its triangles (chordal distance).
    * ``d > 3``: ``num_directions`` i.i.d. uniform random directions (fixed ``seed``) with a
      warning: ε is not controlled and is reported as ``nan``.

    Returns:
        ``(directions, covering_radius)`` with directions of shape ``(K, d)``.
    """
    if d < 1:
        raise ValueError("d must be ≥ 1")
    if num_directions < 1:
        raise ValueError("num_directions must be ≥ 1")
    if d == 1:
        return np.array([[-1.0], [1.0]]), 0.0
    if d == 2:
        k = int(num_directions)
        ang = 2.0 * np.pi * np.arange(k) / k
        return np.stack([np.cos(ang), np.sin(ang)], axis=1), float(2.0 * np.sin(np.pi / (2 * k)))
    if d == 3:
        level = next(lv for lv in itertools.count() if 10 * 4**lv + 2 >= num_directions)
        verts, faces = _icosphere(level)
        a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
        normal = np.cross(b - a, c - a)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        normal *= np.sign(np.sum(normal * (a + b + c), axis=1, keepdims=True))
        eps = float(np.max(np.linalg.norm(normal - a, axis=1)))
        return verts, eps
    warnings.warn(
        f"d = {d} > 3: using {num_directions} random directions; the dictionary does not cover "
        "the sphere finely and the estimate may be far below the true global margin",
        stacklevel=2,
    )
    g = np.random.default_rng(seed).standard_normal((num_directions, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True), float("nan")


def global_margin_estimate(
    x: ArrayLike,
    y: ArrayLike,
    num_directions: int = 2562,
    seed: int = 0,
    extra_directions: ArrayLike | None = None,
) -> GlobalMarginResult:
    """Global squared-ReLU max margin of Proposition 4.6 (part 2), by an LP on a dictionary.

    The target is ``max_{ν} min_i y_i ∫ max(0, ⟨x_i, θ⟩)² dν(θ)`` over signed measures ν on
    ``S^{d−1}`` with total variation ≤ 1. Restricting ν to atoms on a dictionary ``{θ_k}``
    (:func:`sphere_directions`, plus ``extra_directions``) gives the LP (HiGHS)

        maximise t  s.t.  Σ_k (ν⁺_k − ν⁻_k) y_i max(0, ⟨x_i, θ_k⟩)² ≥ t  ∀i,
                          ν⁺, ν⁻ ≥ 0,  Σ_k (ν⁺_k + ν⁻_k) ≤ 1,

    whose value is a lower bound on the target, non-decreasing when the dictionary grows
    (nested grids), and within ``2 ε max‖x_i‖²`` of it (ε the covering radius).

    Args:
        x: inputs, shape ``(n, d)``, ``d ≤ 3`` for a controlled grid (``d > 3`` warns).
        y: labels ±1.
        num_directions: dictionary size (``d = 2``: exactly; ``d = 3``: rounded up to an
            icosphere size; ``d > 3``: random directions).
        seed: seed of the random dictionary for ``d > 3`` (ignored otherwise).
        extra_directions: optional rows appended to the dictionary (normalized), e.g. the
            limiting neuron directions ``θ̄_j`` so that the estimate dominates
            :func:`local_margin_guarantee`. Zero rows are dropped.
    """
    x, y = _check_binary(x, y)
    d = x.shape[1]
    dirs, eps = sphere_directions(d, num_directions, seed=seed)
    if extra_directions is not None:
        extra = np.atleast_2d(np.asarray(extra_directions, dtype=np.float64))
        if extra.shape[1] != d:
            raise ValueError(f"extra_directions must have {d} columns, got {extra.shape}")
        nrm = np.linalg.norm(extra, axis=1)
        extra = extra[nrm > 0] / nrm[nrm > 0, None]
        dirs = np.vstack([dirs, extra])
    feat = y[:, None] * np.maximum(0.0, x @ dirs.T) ** 2  # (n, K)
    value, w = _max_min_lp(np.hstack([feat, -feat]), total_mass_eq=False)
    k = dirs.shape[0]
    weights = w[:k] - w[k:]
    upper = value + 2.0 * eps * float(np.max(np.sum(x * x, axis=1)))
    return GlobalMarginResult(
        value=value,
        upper_bound=upper,
        directions=dirs,
        weights=weights,
        covering_radius=eps,
    )
