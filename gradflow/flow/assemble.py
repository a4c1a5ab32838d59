"""The result of a flow: its segments' save points concatenated into a :class:`gradflow.FlowResult`,
with a status, a reason, and the solver statistics (gradient evaluations counted once, here)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import diffrax
import jax
import numpy as np

from ..clock import lag_rtol
from ..errors import SolverFailure
from ..interop import final_model_and_params
from ..result import FlowResult
from ..sliding import COUNTS
from ..solvers import JVP_COST

__all__ = ["Segment", "assemble", "result_name"]


@dataclass
class Segment:
    """One segment of a run, on the host (numpy), as :func:`assemble` and the checkpoints read it.

    ``saved``: the diagnostics at the save points reached; ``final_diag``: at the segment's end;
    ``final_state``: its :class:`~gradflow.flow.state.FlowState`; ``result_name``: 'successful',
    'event_occurred', 'max_steps_reached' or 'failed', with ``reason``; ``stats``: diffrax's step
    counts and the work beyond the explicit stages (``extra_evaluations``, ``extra_jvps``);
    ``evals_per_step``: gradient evaluations per attempted step not counted by the solve (None:
    unknown); ``start_evals``: evaluations before the first step; ``num_save``: save points asked for."""

    saved: dict
    final_diag: dict
    final_state: Any
    result_name: str
    reason: str
    stats: dict
    wall: float
    num_save: int
    evals_per_step: int | None
    start_evals: int
    solver_name: str
    implicit_segments: int = 0
    s_final: float = float("nan")
    controller_state: Any = None
    eigvec: Any = None
    dt_next: float | None = None
    extra: dict = field(default_factory=dict)

    def evaluations(self) -> float:
        """Gradient evaluations: explicit stages per attempted step, the implicit stage solves'
        Newton–GMRES work and the sliding passes (counted in the solve, JVPs at JVP_COST), and the
        evaluations before the first step."""
        return (self.stats["num_steps"] * self.evals_per_step + self.start_evals + self.stats.get("extra_evaluations", 0)
                + JVP_COST * self.stats.get("extra_jvps", 0))


def result_name(result) -> str:
    for name in ("successful", "event_occurred", "max_steps_reached"):
        if result == getattr(diffrax.RESULTS, name):
            return name
    return "failed"


def assemble(segments: list[Segment], static, degree, *, config, throw, stop_reason: str | None):
    """Concatenate the segments' save points (+ the final state if it is not a save point) into a
    FlowResult with a status and reason."""
    parts = [seg.saved for seg in segments]
    diag = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    last, final_diag = segments[-1], segments[-1].final_diag
    last_log_t = diag["log_t"][-1] if len(diag["log_t"]) else -np.inf
    if not np.isclose(final_diag["log_t"], last_log_t, rtol=1e-12, atol=0) and np.isfinite(final_diag["log_loss"]):
        diag = {k: np.concatenate([diag[k], final_diag[k][None]]) for k in diag}
    if degree is None:
        for k in ("smoothed_margin", "beta", "margin", "margins", "potential"):
            diag.pop(k, None)
    if last.result_name == "successful":
        status, reason = "completed", ""
    elif last.result_name == "event_occurred":
        status, reason = "stopped at target", stop_reason or ""
    else:
        status, reason = "failed", last.reason
    params_final = last.final_state.W
    if not all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(params_final)):
        status, reason = "failed", "non-finite parameters (NaN/inf) in the state" + (f"; {reason}" if reason else "")
    uncounted = any(seg.evals_per_step is None for seg in segments)
    counted = sum(seg.evaluations() for seg in segments if seg.evals_per_step is not None)
    jvps = sum(seg.stats.get("extra_jvps", 0) for seg in segments)
    stats_out = {
        "steps": sum(seg.stats["num_steps"] for seg in segments),
        "accepted_steps": sum(seg.stats["num_accepted_steps"] for seg in segments),
        "rejected_steps": sum(seg.stats["num_rejected_steps"] for seg in segments),
        "gradient_evaluations": None if uncounted else _as_count(counted),
        "jacobian_vector_products": jvps,
        "implicit_segments": sum(seg.implicit_segments for seg in segments),
        "gradient_evaluations_note": (
            "not counted: implicit segments with a root finder other than gradflow's (whose Newton and GMRES "
            f"iterations diffrax does not report); the other segments used {_as_count(counted)}"
        ) if uncounted else (_jvps_note(jvps, segments) if jvps else ""),
        "diagnostic_evaluations": sum(seg.num_save + 1 for seg in segments),
        **_sliding_stats(last.final_state),
        **({"sharpness_hvps": int(np.sum(diag["sharpness_hvps"]))} if "sharpness_hvps" in diag else {}),
        "wall_time": sum(seg.wall for seg in segments),
        "segments": len(segments),
    }
    res = FlowResult(
        diagnostics=diag, status=status, reason=reason, stats=stats_out, config=config,
        **final_model_and_params(params_final, static),
    )
    _warn_if_stalled(diag, config)
    if stats_out.get("sliding_overflow", 0) > 0:
        warnings.warn(
            f"{stats_out['sliding_overflow']} sliding-set entries did not fit the capacity of "
            f"{stats_out['sliding_capacity']} pairs (the memory bound of gradflow.sliding.MAX_NORMALS for this "
            "model's parameters): those pairs kept their own derivative and chattered. The result is the flow up to "
            "that chattering; a smaller model, or fewer examples, fits.", stacklevel=3)
    if status == "failed" and throw:
        raise SolverFailure(f"simulate_flow failed: {reason}", res)
    return res


def _as_count(value) -> int:
    """A gradient-evaluation total, rounded to an int (JVPs at JVP_COST may make it fractional)."""
    return int(round(float(value)))


def _jvps_note(jvps: int, segments: list[Segment]) -> str:
    """What the JVPs in ``stats["gradient_evaluations"]`` were: the Newton–GMRES stage solves of
    implicit segments (Hessian-vector products), the sliding field's checks at a step's end (dz/ds
    of the kinks that crossed or approach, along f₁: :meth:`gradflow.sliding.Sliding.kink_rates`), or both."""
    sources = []
    if any(seg.implicit_segments for seg in segments):
        sources.append("Newton–GMRES stage solves")
    if any(seg.final_state.slide is not None for seg in segments):
        sources.append("the sliding set's checks at step ends, dz/ds of the kinks along the field")
    what = " and ".join(sources) or "the field"
    return f"includes {jvps} Jacobian-vector products ({what}) at {JVP_COST:g} gradient evaluation(s) each"


def _sliding_stats(final_state) -> dict:
    """``stats`` of a run with sliding (gradflow.sliding): the counts of its final state."""
    if final_state.slide is None:
        return {}
    counts = {f"sliding_{name}": int(v) for name, v in zip(COUNTS, np.asarray(final_state.slide.counts), strict=True)}
    counts["sliding_capacity"] = int(final_state.slide.slots.shape[0])
    return counts


def _warn_if_stalled(diag: dict, config: dict) -> None:
    """Warn when the loss stalls above ℓ(0) with misclassified points: data not separable by the model.

    If some p_i ≤ 0 then L ≥ ℓ(p_i) ≥ ℓ(0), so a flow that keeps training error above zero can
    never enter the regime of Assumption 2.3."""
    log_loss = diag["log_loss"]
    if len(log_loss) < 8 or diag["train_error"][-1] == 0:
        return
    quarter = len(log_loss) // 4
    drop = log_loss[-quarter - 1] - log_loss[-1]
    if drop < 1e-3 * max(1.0, abs(log_loss[-1])):
        warnings.warn(
            f"The loss stalls at ln L = {log_loss[-1]:.6g} with {diag['train_error'][-1]:.1%} of the examples "
            "misclassified: the data do not look separable by this model, so L cannot go below ℓ(0) and the "
            "paper's late-training regime is never reached. Use a more expressive model or separable data.",
            stacklevel=3,
        )


def fail_off_clock(seg: Segment, key: str, wanted, start: float, rtol: float) -> None:
    """Fail a segment that ran its course from its first save point whose W is not at the clock's
    value (see :func:`off_clock`), keeping the save points before it. ``key``: the clock's saved
    quantity (``Clock.save_key``); ``wanted``: the save points reached; ``start``: the quantity at
    the segment's start. Used by :func:`gradflow.simulate_flow` and, per member, by
    :func:`gradflow.simulate_ensemble`."""
    first = off_clock(np.asarray(seg.saved[key]), wanted, start, rtol)
    if first is None:
        return
    got, want = float(seg.saved[key][first]), float(wanted[first])
    before = float(seg.saved[key][first - 1]) if first > 0 else start
    seg.saved = {k: v[:first] for k, v in seg.saved.items()}
    seg.result_name = "failed"
    seg.reason = (f"The state left the clock between ln(n/L) = {before:.6g} and the save point ln(n/L) = {want:.6g}: "
                  f"W there has ln(n/L) = {got:.6g}. In the accuracy clock W is integrated in α (dW/dα = ∇α/‖∇α‖²), "
                  "and where ‖∇α‖ collapses (a stationary point of the field, or a sliding mode along which α "
                  "cannot grow) the integrated α runs ahead of α(W); the save points from there on are dropped, and "
                  "the final W (the result's last row and model) is not the flow's. Try: clock='time' to follow the flow "
                  "through it (it shows whether L stalls), or a smaller rtol.")


def off_clock(position, wanted, start: float, rtol: float) -> int | None:
    """The first save point whose W is not at its clock value, or None.

    The accuracy clock integrates dW/dα = ∇α/‖∇α‖², so ln(n/L) of W at a save point equals the save
    point up to the integration error (the time clock saves at t itself: always equal). ``position``:
    the clock's quantity of W at the save points reached (ln(n/L), or t); ``wanted``: those save
    points; ``start``: the quantity at the start (save points at or below it are the start itself).
    Off means |position − wanted| > max(1e-3, 100 r) · max(1, |wanted|), r = rtol at most 1e-4
    (:func:`gradflow.clock.lag_rtol`). Measured (the DenseNet of
    Figure 2 at the tiny size from its initialisation, rtol 1e-4): the save points matched ln(n/L) of
    W to 1e-3 up to 5.62, then the target 8 was saved with W at ln(n/L) = 1.14 and the run reported
    "completed"."""
    position, wanted = np.asarray(position, np.float64), np.asarray(wanted, np.float64)
    tol = max(1e-3, 100.0 * lag_rtol(rtol)) * np.maximum(1.0, np.abs(wanted))
    bad = (np.abs(position - wanted) > tol) & (wanted > start + tol)
    return int(np.argmax(bad)) if bad.any() else None
