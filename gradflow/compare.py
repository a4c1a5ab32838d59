r"""Compare two trajectories (flow vs descent, descent vs descent, ...) stored as FlowResults.

Three comparisons, each at matched values of a clock both runs share:

1. **Parameters at matched time t.** ‖W_a(t) − W_b(t)‖ (and relative to ‖W_b(t)‖) at the save
   times of ``a`` inside ``b``'s time range, with W_b(t) linearly interpolated between ``b``'s save
   points (exact when ``b`` was saved at ``a``'s times, e.g. a flow run with ``save_at=a.t``).
   Needs ``diagnostics["params_flat"]`` (T, k) in both results (``simulate_descent(...,
   save_params=True)``).
2. **Directions at matched optimization accuracy** K = ln(n/L). The angle between W_a/‖W_a‖ and
   W_b/‖W_b‖, 2·arcsin(‖W̃_a − W̃_b‖/2) ∈ [0, π], with each run's parameters linearly interpolated
   in K and then normalized. Also needs ``params_flat``.
3. **Normalized margin distributions at matched K.** The normalized margins p_i/‖W‖^L of both runs
   (interpolated in K) are sorted; reported are the largest difference of the sorted values,
   max_j |a_(j) − b_(j)|, and the Wasserstein-1 distance between the two empirical distributions,
   which for two samples of equal size n is (1/n) Σ_j |a_(j) − b_(j)|. For a non-homogeneous
   model (no ``margins``) the raw margins are normalized by their median nonnegative value, as in
   Appendix A.

K is interpolated along the part of each run where it increases strictly (points where ln(n/L)
does not exceed every earlier value are skipped), so a non-monotone descent run is read at the
first time it reaches each level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InvalidTypeError, bad_argument
from .result import FlowResult

__all__ = ["compare"]

_REL_TOL = 1e-6  # clock values this close to a range end count as inside (e.g. an event overshoot)


def _interp_rows(xq: np.ndarray, xs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Linear interpolation of the rows of ``rows`` (T, ...) at ``xq`` (inside [xs[0], xs[-1]])."""
    if len(xs) == 1:
        return np.repeat(rows[:1], len(xq), axis=0)
    idx = np.clip(np.searchsorted(xs, xq, side="right") - 1, 0, len(xs) - 2)
    span = xs[idx + 1] - xs[idx]
    w = np.where(span > 0, (xq - xs[idx]) / np.where(span > 0, span, 1.0), 0.0)
    w = w.reshape((-1,) + (1,) * (rows.ndim - 1))
    return (1.0 - w) * rows[idx] + w * rows[idx + 1]


def _increasing(xs: np.ndarray) -> np.ndarray:
    """Indices of the finite points of ``xs`` that exceed every earlier one."""
    keep, best = [], -np.inf
    for i, v in enumerate(xs):
        if np.isfinite(v) and v > best:
            keep.append(i)
            best = v
    return np.asarray(keep, dtype=int)


def _inside(xq: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask of the query points inside [xs[0], xs[-1]] (with a relative tolerance) and them clipped."""
    if len(xs) == 0:
        return np.zeros(len(xq), bool), xq
    tol = _REL_TOL * max(1.0, float(np.max(np.abs(xs))))
    mask = np.isfinite(xq) & (xq >= xs[0] - tol) & (xq <= xs[-1] + tol)
    return mask, np.clip(xq, xs[0], xs[-1])


def _direction_angle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle between the rows of u and v as 2·arcsin(‖ũ − ṽ‖/2), accurate for small angles."""
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return 2.0 * np.arcsin(np.minimum(0.5 * np.linalg.norm(u - v, axis=-1), 1.0))


def _normalized_margins(r: FlowResult) -> np.ndarray:
    d = r.diagnostics
    if "margins" in d:
        return np.asarray(d["margins"], dtype=float)
    raw = np.asarray(d["raw_margins"], dtype=float)
    med = np.array([np.median(row[row >= 0]) if np.any(row >= 0) else np.nan for row in raw])
    return raw / med[:, None]


def _as_result(r: Any, name: str) -> FlowResult:
    if not isinstance(r, FlowResult):
        raise InvalidTypeError(f"{name}: expected a gradflow.FlowResult, got {type(r).__name__}. Pass the result of simulate_flow or simulate_descent.")
    if len(r) == 0:
        raise bad_argument(name, "has no save points", "Pass a result with at least one save point.")
    return r


def compare(
    a: FlowResult,
    b: FlowResult,
    *,
    accuracies: Any = None,
    times: Any = None,
) -> dict[str, Any]:
    r"""Distances between the trajectories ``a`` and ``b`` at matched t and at matched ln(n/L).

    Args:
      a, b: results of :func:`gradflow.simulate_flow` / :func:`gradflow.simulate_descent` on the
        same model architecture and data. ``b`` is interpolated at ``a``'s points.
      accuracies: the levels K = ln(n/L) at which directions and margins are compared (default:
        ``a``'s save points inside both runs' range). Levels outside a run's range give NaN.
      times: the times t at which parameters are compared (default: ``a``'s finite save times
        inside ``b``'s range).

    Returns:
      A dict of numpy arrays and floats:
        ``times``, ``param_distance`` ‖W_a(t) − W_b(t)‖, ``relative_param_distance``
        (÷ ‖W_b(t)‖), ``max_param_distance`` — None when either result lacks ``params_flat``;
        ``accuracies``, ``angle`` (radians, NaN outside a range or without ``params_flat``),
        ``max_angle``;
        ``margin_max_abs_diff`` (max |sorted differences|), ``margin_wasserstein`` (W₁) per level,
        and their maxima ``max_margin_max_abs_diff``, ``max_margin_wasserstein``;
        ``edge``: at the time t of the edge of stability of the descent run (its
        ``stats["edge_t"]``, the first iteration with λ_max(∇²L) > 2/η), a dict with ``t``,
        ``param_distance``, ``relative_param_distance`` and ``angle`` (between W_a(t) and W_b(t)),
        or None when neither run reached the edge; ``end``: the same at the last time both runs
        reached.
    """
    a = _as_result(a, "a")
    b = _as_result(b, "b")
    da, db = a.diagnostics, b.diagnostics
    if np.shape(da["raw_margins"])[1:] != np.shape(db["raw_margins"])[1:]:
        raise bad_argument("b", f"has {np.shape(db['raw_margins'])[1]} examples but a has {np.shape(da['raw_margins'])[1]}", "Compare runs on the same data.")
    have_params = "params_flat" in da and "params_flat" in db
    if have_params and np.shape(da["params_flat"])[1:] != np.shape(db["params_flat"])[1:]:
        raise bad_argument("b", "has a different number of parameters than a", "Compare runs of the same architecture.")
    out: dict[str, Any] = {}

    # (1) parameters at matched t
    ta, tb = np.asarray(da["t"], float), np.asarray(db["t"], float)
    ib = _increasing(tb)
    if times is None:
        tq = ta[np.isfinite(ta)]
    else:
        tq = np.atleast_1d(np.asarray(times, float))
    mask, tq_clip = _inside(tq, tb[ib])
    tq, tq_clip = tq[mask], tq_clip[mask]
    out["times"] = tq
    if have_params and len(tq):
        ia = _increasing(ta)
        pa = _interp_rows(np.clip(tq, ta[ia][0], ta[ia][-1]), ta[ia], np.asarray(da["params_flat"], float)[ia])
        pb = _interp_rows(tq_clip, tb[ib], np.asarray(db["params_flat"], float)[ib])
        dist = np.linalg.norm(pa - pb, axis=1)
        out["param_distance"] = dist
        out["relative_param_distance"] = dist / np.linalg.norm(pb, axis=1)
        out["max_param_distance"] = float(np.max(dist))
    else:
        out["param_distance"] = out["relative_param_distance"] = out["max_param_distance"] = None

    # (2), (3) at matched ln(n/L)
    acc_a, acc_b = np.asarray(da["accuracy"], float), np.asarray(db["accuracy"], float)
    ia, ib = _increasing(acc_a), _increasing(acc_b)
    xa, xb = acc_a[ia], acc_b[ib]
    if accuracies is None:
        lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
        kq = xa[(xa >= lo) & (xa <= hi)]
    else:
        kq = np.atleast_1d(np.asarray(accuracies, float))
    in_a, ka = _inside(kq, xa)
    in_b, kb = _inside(kq, xb)
    ok = in_a & in_b
    out["accuracies"] = kq
    angle = np.full(len(kq), np.nan)
    if have_params and ok.any():
        ua = _interp_rows(ka[ok], xa, np.asarray(da["params_flat"], float)[ia])
        ub = _interp_rows(kb[ok], xb, np.asarray(db["params_flat"], float)[ib])
        angle[ok] = _direction_angle(ua, ub)
    out["angle"] = angle
    out["max_angle"] = float(np.nanmax(angle)) if np.any(np.isfinite(angle)) else float("nan")

    sup = np.full(len(kq), np.nan)
    w1 = np.full(len(kq), np.nan)
    if ok.any():
        ma = np.sort(_interp_rows(ka[ok], xa, _normalized_margins(a)[ia]), axis=1)
        mb = np.sort(_interp_rows(kb[ok], xb, _normalized_margins(b)[ib]), axis=1)
        diff = np.abs(ma - mb)
        sup[ok] = np.max(diff, axis=1)
        w1[ok] = np.mean(diff, axis=1)
    out["margin_max_abs_diff"] = sup
    out["margin_wasserstein"] = w1
    out["max_margin_max_abs_diff"] = float(np.nanmax(sup)) if np.any(np.isfinite(sup)) else float("nan")
    out["max_margin_wasserstein"] = float(np.nanmax(w1)) if np.any(np.isfinite(w1)) else float("nan")

    # (4) at the edge of stability of a descent run and at the end of the common time range
    edge_t = next((r.stats.get("edge_t") for r in (b, a) if r.stats.get("edge_t") is not None), None)
    common_end = min(float(np.max(ta[np.isfinite(ta)])), float(np.max(tb[np.isfinite(tb)])))
    out["edge"] = _at_time(da, db, edge_t) if edge_t is not None else None
    out["end"] = _at_time(da, db, common_end)
    return out


def _at_time(da: dict, db: dict, t: float) -> dict[str, Any]:
    """‖W_a(t) − W_b(t)‖, its ratio to ‖W_b(t)‖ and the angle between them (each run linearly
    interpolated in t; NaN without ``params_flat``)."""
    row: dict[str, Any] = {"t": float(t), "param_distance": float("nan"), "relative_param_distance": float("nan"),
                           "angle": float("nan")}
    if "params_flat" not in da or "params_flat" not in db:
        return row
    w = []
    for d in (da, db):
        ts = np.asarray(d["t"], float)
        idx = _increasing(ts)
        w.append(_interp_rows(np.clip([t], ts[idx][0], ts[idx][-1]), ts[idx], np.asarray(d["params_flat"], float)[idx])[0])
    dist = float(np.linalg.norm(w[0] - w[1]))
    row.update(param_distance=dist, relative_param_distance=dist / float(np.linalg.norm(w[1])),
               angle=float(_direction_angle(w[0][None], w[1][None])[0]))
    return row
