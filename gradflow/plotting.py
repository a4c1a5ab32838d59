"""Figures of a FlowResult against ln(n/L), the x-axis of the paper's Figure 2."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["plot_flow"]


def plot_flow(result, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Six panels against ln(n/L): α̃ and the normalized margin, ‖W‖, θ_t, ζ_t, β − α (Lemma C.5),
    and the per-example normalized margins (sorted by final value, as in Appendix A); then a row
    of optional panels for the diagnostics the result has (``_EXTRA_PANELS``): activation flips
    and near-zero share (:mod:`gradflow.activations`), sliding pairs, drift and chain-rule
    residual (:mod:`gradflow.sliding`), the error_check differences (:mod:`gradflow.error_check`).

    With sharpness recorded (``diagnostics["log_sharpness"]``) one more panel (first row, fourth
    column), against ln(n/L) like the others (never against t, which spans up to ~80 orders of
    magnitude in a long accuracy-clock run): for a flow the normalized sharpness
    λ_max(∇²L)/L = λ_max(∇²L/L), for a descent run λ_max(∇²L) with the stability bound 2/η.

    Why λ_max/L for flows: late in training ∇²L ≈ L·(...) falls with L itself (to 1e-85 on the
    demo), so λ_max(∇²L) on a log axis only repeats the loss; λ_max/L is the eigenvalue the power
    iteration computes (of ∇²g = ∇²L/L, :mod:`gradflow.sharpness`), stays O(1)–polynomial in ‖W‖
    at any ln L, and is the curvature seen by normalized GD (step η/L on L). λ_max of ∇² ln L
    = ∇²L/L − ∇L∇Lᵀ/L² would need that rank-one correction too, which is not computed. For a
    descent run the edge of stability compares λ_max(∇²L) with 2/η in the same units. Save points
    without a value (the default sharpness budget evaluates a subset) are skipped; the points
    that have one are marked.

    Returns the matplotlib Figure; writes it to ``path`` (PNG/PDF by extension) when given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    d = result.diagnostics
    acc = d["accuracy"]
    with_sharpness = "log_sharpness" in d
    cols = 3 + with_sharpness
    extra = [panel for panel in _EXTRA_PANELS if panel(None, d)]
    rows = 2 + -(-len(extra) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13 + 4 * with_sharpness, 3.5 * rows), constrained_layout=True)
    below = axes[2:].flat
    for panel, ax in zip(extra, below, strict=False):
        panel(ax, d)
    for ax in list(axes[2:].flat)[len(extra):]:
        ax.set_visible(False)
    ax = axes[0, 0]
    if "smoothed_margin" in d:
        ax.plot(acc, d["smoothed_margin"], label="α̃ = α/‖W‖^L")
        ax.plot(acc, d["margin"], "--", label="min_i p_i/‖W‖^L")
        ax.legend()
    ax.set_title("smoothed and exact margin")
    axes[0, 1].semilogy(acc, d["norm"])
    axes[0, 1].set_title("‖W‖")
    axes[0, 2].semilogy(acc, np.maximum(d["angle"], 1e-17))
    axes[0, 2].set_title("θ_t: angle(W, −∇L) [rad]")
    axes[1, 0].plot(acc, d["path_length"])
    axes[1, 0].set_title("ζ_t: path length of W/‖W‖")
    if "beta" in d:
        axes[1, 1].plot(acc, d["beta"] - d["alpha"])
        n = d["raw_margins"].shape[1]
        axes[1, 1].axhline(2 * np.log(n) + 1, color="k", ls=":", label="2 ln n + 1 (Lemma C.5)")
        axes[1, 1].legend()
    axes[1, 1].set_title("β − α")
    ax = axes[1, 2]
    margins = d["margins"] if "margins" in d else d["raw_margins"]
    order = np.argsort(margins[-1])
    ax.plot(acc, margins[:, order], lw=0.7)
    ax.set_title("per-example normalized margins")
    for a in axes.flat:
        a.set_xlabel("ln(n/L)")
    if with_sharpness:
        _sharpness_panel(axes[0, 3], d)
        axes[1, 3].set_visible(False)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=110)
        plt.close(fig)
    return fig


def _per_unit_accuracy(acc: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """counts[i] (since save point i − 1) divided by the ln(n/L) gained, at the interval midpoints."""
    gain = np.diff(acc)
    keep = gain > 0
    return (0.5 * (acc[1:] + acc[:-1]))[keep], np.asarray(counts[1:], float)[keep] / gain[keep]


def _activation_panel(ax, d) -> bool:
    """ReLU sign flips (and max-pool switches) per unit ln(n/L); near-zero share on a second axis."""
    if "activation_flips" not in d:
        return False
    if ax is None:
        return True
    acc = d["accuracy"]
    for name, label in (("activation_flips", "ReLU flips"), ("pool_switches", "max-pool switches")):
        if name in d and len(acc) > 1:
            xs, rate = _per_unit_accuracy(acc, d[name])
            ax.semilogy(xs, np.where(rate > 0, rate, np.nan), ".-", ms=3, label=f"{label} per unit ln(n/L)")
    ax.legend(loc="upper right", fontsize=8)
    twin = ax.twinx()
    twin.plot(acc, d["near_zero_share"], color="gray", lw=0.8)
    twin.set_ylabel("share 0 < |z| < 1e-3·RMS", color="gray")
    ax.set_title("activation pattern")
    return True


def _error_panel(ax, d) -> bool:
    """error_check: the differences between the run and its 10× tighter twin."""
    if "error_direction" not in d:
        return False
    if ax is None:
        return True
    acc = d["accuracy"]
    for name, label in (("error_direction", "‖ΔW/‖W‖‖"), ("error_margins", "max_i |Δ p_i/‖W‖^L|"),
                        ("error_smoothed_margin_rel", "|Δα̃|/α̃")):
        if name in d:
            ax.semilogy(acc, np.where(d[name] > 0, d[name], np.nan), label=label)
    ax.legend(fontsize=8)
    ax.set_title("error_check: run − run at rtol/10")
    return True


def _sliding_panel(ax, d) -> bool:
    """Sliding modes (:mod:`gradflow.sliding`): the pairs sliding along their kink surfaces, and
    the two checks of the sliding field: the drift max |z_s|/rms off the surfaces and the residual
    of the chain rule dL/dt = −‖dW/dt‖² (Lemma B.9), relative."""
    if "sliding_pairs" not in d:
        return False
    if ax is None:
        return True
    acc = d["accuracy"]
    ax.plot(acc, d["sliding_pairs"], ".-", ms=3, color="C0", label="sliding pairs |A|")
    ax.set_ylabel("sliding pairs", color="C0")
    twin = ax.twinx()
    for name, label, color in (("sliding_drift", "drift max |z_s|/rms", "C1"),
                               ("chain_rule_residual", "chain-rule residual", "C2")):
        if name in d:
            v = np.asarray(d[name], float)
            twin.semilogy(acc, np.where(v > 0, v, np.nan), lw=0.9, color=color, label=label)
    twin.legend(loc="upper right", fontsize=8)
    ax.set_title("sliding modes")
    return True


# Optional panels: each ``panel(ax, d)`` returns whether ``d`` has its data (called with ax=None
# to ask) and draws on ``ax``.
_EXTRA_PANELS = (_activation_panel, _sliding_panel, _error_panel)


def _sharpness_panel(ax, d) -> None:
    """The sharpness against ln(n/L) (see :func:`plot_flow`): λ_max(∇²L)/L for a flow,
    λ_max(∇²L) and 2/η for a descent run; from ``log_sharpness``, finite where λ_max underflows."""
    acc = d["accuracy"]
    descent = "log_two_over_eta" in d
    log_value = d["log_sharpness"] if descent else d["log_sharpness"] - d["log_loss"]
    have = np.isfinite(log_value)
    label = "λ_max(∇²L)" if descent else "λ_max(∇²L)/L"
    ax.semilogy(acc[have], np.exp(log_value[have]), ".-", ms=3, label=label)
    if descent:
        ax.semilogy(acc, np.exp(d["log_two_over_eta"]), "k--", label="2/η")
    ax.set_title("sharpness" if descent else "normalized sharpness λ_max(∇²L)/L")
    ax.legend()
