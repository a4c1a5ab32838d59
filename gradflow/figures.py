r"""The paper's Figures 1–3, reproduced with the gradient flow (Appendix A of Ji & Telgarsky, 2020).

**Figure 1** (:func:`figure1`). Appendix-A data (2-D points labelled by a random ReLU teacher with a
bias, low-margin points deleted, embedded as (z, 1)); the two-layer squared-ReLU network
Φ(x; W) = Σ_j s_j max(0, ⟨w_j, x⟩)² with fixed random signs s_j (2-homogeneous in W) and the
exponential loss. Three contour plots of the prediction surface over z ∈ [−1, 1]² (third
coordinate 1):

* (a) the NTK max-margin predictor. Freezing the activations at the initial w gives the predictor
  Φ_NTK(x; v) = Σ_j s_j ⟨v_j, x⟩ max(0, ⟨w_j, x⟩) = ⟨v, ψ(x)⟩, linear in v with features
  ψ(x) = (s_j max(0, ⟨w_j, x⟩) x)_j ∈ R^{m·d}. Gradient flow on a linear predictor converges in
  direction to the hard-margin SVM direction (Soudry et al.; Proposition 4.4 with L = 1), so
  panel (a) is v̄ = argmax_{‖v‖ ≤ 1} min_i y_i ⟨v, ψ(x_i)⟩, computed exactly by
  :func:`gradflow.maxmargin.svm_direction` on the features ψ(x_i).
* (b) the network at the first save point with perfect classification, p_i = y_i Φ(x_i) > 0 ∀i.
  The flow is run in the accuracy clock up to ln(n/L) = ln n + 0.01: for the exponential loss
  L < 1 forces every ℓ(p_i) = e^{−p_i} < 1, i.e. p_i > 0, so perfect classification is reached by
  then; the first save point (on a grid of ``first_saves`` points in ln(n/L)) with zero training
  error is shown.
* (c) the network trained much longer, to ln(n/L) = ``target`` (1000; ``--quick``: 100).

Checks (returned in ``checks``): (b) classifies every point; the normalized margin
min_i p_i/‖W‖² at (c) is ≥ that at (b) (α̃ is nondecreasing once L < ℓ(0), Lemma C.5 / Theorem 4.1,
and the margin follows it); the fraction of the square where sign Φ_NTK ≠ sign Φ_(c).

**Figures 2 and 3** (:func:`figure2`, :func:`figure3`). Multiclass margins
p_i = Φ(x_i)_{y_i} − max_{j≠y_i} Φ(x_i)_j of every training example under the cross-entropy
loss, at each save point divided by the median of the nonnegative margins at that time (the
normalization of Appendix A, which also applies to non-homogeneous nets), ordered by their final
value (a fixed order, so each line is one example) and plotted against ln(n/L). Models:
:class:`gradflow.HomogeneousCNN` (5-homogeneous H-AlexNet, Figure 2a),
:class:`gradflow.models.nonhomogeneous.SmallDenseNet` (Figure 2b) and
:class:`~gradflow.models.nonhomogeneous.SmallResNet` (Figure 3), both with biases, outside the
theory. Data: scikit-learn's 8×8 digits by default, or CIFAR-10 from local python batches. By
default the full-batch gradient flow (accuracy clock); ``sgd=True`` runs mini-batch normalized
SGD (step η/L̂, the paper's "step size scaled by 1/L") with batch 512 instead.

Checks: margins converge, measured as the mean absolute change of the normalized margins over the
last quarter of the ln(n/L) range being smaller than over the first quarter (after all examples are
classified, where the median normalization is stable); for the homogeneous CNN, α̃ = α/‖W‖⁵ is
nondecreasing (up to 1e−9 relative) over the save points with L < ℓ(0) (Lemma C.5).

Sizes: ``"full"`` (the paper's width 10 000 for Figure 1; all 1 797 digits), ``"quick"``
(< 2 minutes per figure on 2 CPU cores) and ``"tiny"`` (seconds; for tests).

Where the pieces live: the NTK reference of panel (a) in :mod:`gradflow.ntk`, the data in
:func:`gradflow.datasets.load_image_data`, the margin networks in
:func:`gradflow.models.make_margin_model`, W at a save point in :func:`gradflow.theory.model_at`;
this module runs the flows, checks them and draws. The command line is ``gradflow reproduce``
(:mod:`gradflow.cli`); ``gradflow reproduce docs`` writes small PNGs of all three figures to
``docs/`` (:func:`write_docs_pngs`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from . import datasets
from .datasets import load_image_data
from .descent import normalized_gd, simulate_descent
from .errors import bad_argument
from .flow import simulate_flow
from .losses import get_loss
from .models import MARGIN_ARCHITECTURES, TwoLayerSquaredReLU, make_margin_model
from .ntk import ntk_max_margin, squared_relu_surface
from .options import check_positive_finite
from .progress import concat_results, descend_with_progress, initial_accuracy, simulate_with_progress
from .result import FlowResult, json_default
from .theory import model_at

__all__ = [
    "FIGURE1_SIZES",
    "MARGIN_SIZES",
    "ARCHITECTURES",
    "figure1",
    "figure2",
    "figure3",
    "normalize_by_median",
    "margin_checks",
    "margin_run",
    "write_docs_pngs",
    # moved, still importable from here (tests, examples and benchmarks import them from figures):
    "load_image_data",  # gradflow.datasets.load_image_data
    "make_margin_model",  # gradflow.models.make_margin_model
]

SIZES = ("full", "quick", "tiny")

FIGURE1_SIZES: dict[str, dict[str, Any]] = {
    "full": dict(width=10_000, n=100, target=1000.0, grid=201, solver="kvaerno5", rtol=1e-6, atol=1e-9, segments=10),
    "quick": dict(width=1000, n=100, target=100.0, grid=121, solver="tsit5", rtol=1e-5, atol=1e-8, segments=5),
    "tiny": dict(width=64, n=40, target=20.0, grid=41, solver="tsit5", rtol=1e-5, atol=1e-8, segments=2),
}

MARGIN_SIZES: dict[str, dict[str, Any]] = {
    # n: training examples (None: all); target: final ln(n/L); steps: SGD iterations (sgd=True);
    # warmup_steps: budget of the normalized-GD warm-up to ln(n/L) = ln n + 1 (flow mode)
    "full": dict(n=None, target=40.0, steps=20_000, batch_size=512, segments=10, rtol=1e-6, atol=1e-9, warmup_steps=20_000),
    "quick": dict(n=100, target=15.0, steps=1_500, batch_size=32, segments=3, rtol=1e-5, atol=1e-8, warmup_steps=5_000),
    "tiny": dict(n=30, target=8.0, steps=200, batch_size=10, segments=2, rtol=1e-4, atol=1e-7, warmup_steps=2_000),
}

ARCHITECTURES = MARGIN_ARCHITECTURES
_TITLES = {"hcnn": "H-AlexNet (homogeneous, L = 5)", "densenet": "DenseNet-style (biases, skips)", "resnet": "ResNet-style (biases, skips)"}


def _check_size(size: str) -> str:
    if size not in SIZES:
        raise bad_argument("size", f"unknown size {size!r}", f"Use one of {SIZES}.")
    return size


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, out: str | os.PathLike | None, stem: str, dpi: int) -> list[str]:
    if out is None:
        return []
    os.makedirs(out, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(os.fspath(out), f"{stem}.{ext}")
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def _write_json(out: str | os.PathLike | None, name: str, payload: dict) -> list[str]:
    if out is None:
        return []
    os.makedirs(out, exist_ok=True)
    path = os.path.join(os.fspath(out), name)
    with open(path, "w") as fh:
        json.dump(payload, fh, indent=2, default=json_default)
    return [path]


# --------------------------------------------------------------------------------------------------
# Figure 1
# --------------------------------------------------------------------------------------------------


def _grid(num: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A num × num grid of z ∈ [−1, 1]², embedded as scale·(z, 1) like the training data."""
    g = np.linspace(-1.0, 1.0, num)
    z1, z2 = np.meshgrid(g, g)
    pts = scale * np.stack([z1.ravel(), z2.ravel(), np.ones(z1.size)], axis=1)
    return z1, z2, pts


def figure1(
    size: str = "quick",
    *,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    seed: int = 0,
    width: int | None = None,
    n: int | None = None,
    target: float | None = None,
    first_saves: int = 60,
    dpi: int = 110,
) -> dict[str, Any]:
    r"""Figure 1: NTK max-margin predictor (a), the network at perfect classification (b) and
    trained long (c). See the module docstring for the mathematics.

    Args:
      size: 'full' (width 10 000, ln(n/L) → 1000), 'quick' (< 2 min) or 'tiny' (tests).
      out: directory for ``figure1.png``/``.pdf``, ``figure1_b.npz``/``figure1_c.npz`` (the flow
        results) and ``figure1.json`` (checks, timings); None writes nothing.
      progress: progress bar for the long flow (None: only on a TTY).
      seed: PRNG seed of the network (the data are Appendix A's seed-0 set).
      width, n, target: override the size preset (hidden width m, examples, final ln(n/L)).
      first_saves: save points of the flow to ln n + 0.01, the resolution of "first moment".

    Returns:
      dict with ``checks`` (b_train_error, b_accuracy, margin_b, margin_c, ntk_margin,
      margin_nondecreasing, disagreement_fraction, ...), ``files``, ``timings`` (seconds),
      ``results`` ({'b': FlowResult, 'c': FlowResult}) and the grid surfaces ``surfaces``.
    """

    cfg = dict(FIGURE1_SIZES[_check_size(size)])
    cfg.update({k: v for k, v in dict(width=width, n=n, target=target).items() if v is not None})
    timings: dict[str, float] = {}
    start = time.perf_counter()
    x, y = datasets.appendix_a_synthetic(n=cfg["n"])
    m = int(cfg["width"])
    # init_scale m^(−1/4): Φ(x; W_0) = O(1) at every width (the NTK scaling of a 2-homogeneous net).
    model = TwoLayerSquaredReLU(3, m, key=jax.random.PRNGKey(seed), signs="random", init_scale=m ** -0.25)
    scale = float(x[0, 2])
    z1, z2, pts = _grid(int(cfg["grid"]), scale)

    t0 = time.perf_counter()
    v_bar, ntk_margin = ntk_max_margin(model, x, y)
    w0, s = np.asarray(model.w, np.float64), np.asarray(model.signs, np.float64)
    surf_a = squared_relu_surface(w0, s, pts, v_bar)
    timings["ntk_svm"] = time.perf_counter() - t0

    opts = dict(rtol=cfg["rtol"], atol=cfg["atol"], max_steps=200_000)
    t0 = time.perf_counter()
    n_ex = len(y)
    acc_first = math.log(n_ex) + 0.01
    with warnings.catch_warnings():
        # L(W_0) ≥ ℓ(0) at a small random initialisation: expected for panel (b), which starts there.
        warnings.filterwarnings("ignore", message=".*Assumption 2.3.*")
        acc0 = initial_accuracy(model, (x, y))
        save = acc0 + (acc_first - acc0) * np.linspace(0.0, 1.0, first_saves)
        save[0] += 1e-12 * max(1.0, abs(acc0))
        flow_b = simulate_flow(model, (x, y), clock="accuracy", until_accuracy=acc_first, save_at=save,
                                  save_params=True, solver="tsit5", **opts)
    timings["flow_b"] = time.perf_counter() - t0
    err = np.asarray(flow_b.train_error)
    perfect = np.flatnonzero(err == 0)
    idx_b = int(perfect[0]) if perfect.size else len(err) - 1
    model_b = model_at(flow_b, model, idx_b)
    w_b = np.asarray(model_b.w, np.float64)
    surf_b = squared_relu_surface(w_b, s, pts)

    t0 = time.perf_counter()
    flow_c = simulate_with_progress(flow_b.model, (x, y), float(cfg["target"]), segments=int(cfg["segments"]),
                                    saves_per_segment=12, progress=progress, desc=f"Figure 1(c), m={m}",
                                    solver=cfg["solver"], **opts)
    timings["flow_c"] = time.perf_counter() - t0
    w_c = np.asarray(flow_c.model.w, np.float64)
    surf_c = squared_relu_surface(w_c, s, pts)

    margin_b = float(flow_b.margin[idx_b])
    margin_c = float(flow_c.margin[-1])
    checks = {
        "width": m,
        "n": n_ex,
        "b_train_error": float(err[idx_b]),
        "b_classifies_all": bool(err[idx_b] == 0),
        "b_accuracy": float(flow_b.accuracy[idx_b]),
        "c_accuracy": float(flow_c.accuracy[-1]),
        "c_status": flow_c.status,
        "margin_b": margin_b,
        "margin_c": margin_c,
        "margin_nondecreasing": bool(margin_c >= margin_b),
        "ntk_margin": ntk_margin,
        "disagreement_fraction": float(np.mean(np.sign(surf_a) != np.sign(surf_c))),
        "disagreement_b_c": float(np.mean(np.sign(surf_b) != np.sign(surf_c))),
    }

    plt = _matplotlib()
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4), constrained_layout=True)
    z = x[:, :2] / x[:, 2:]
    panels = [
        (surf_a, f"(a) NTK max-margin predictor (γ = {ntk_margin:.3g})"),
        (surf_b, f"(b) first perfect classification, ln(n/L) = {checks['b_accuracy']:.3g}"),
        (surf_c, f"(c) trained to ln(n/L) = {checks['c_accuracy']:.4g}"),
    ]
    for ax, (surf, title) in zip(axes, panels, strict=True):
        f = surf.reshape(z1.shape)
        lim = float(np.max(np.abs(f))) or 1.0
        ax.contourf(z1, z2, f / lim, levels=np.linspace(-1, 1, 21), cmap="RdBu_r")
        ax.contour(z1, z2, f, levels=[0.0], colors="k", linewidths=1.5)
        ax.scatter(*z[y > 0].T, marker="+", c="red", s=36, linewidths=1.5)
        ax.scatter(*z[y < 0].T, marker="_", c="blue", s=36, linewidths=1.5)
        ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", title=title)
        ax.title.set_fontsize(10)
    fig.suptitle(f"Figure 1: squared-ReLU network, width {m}, n = {n_ex}; sign disagreement (a) vs (c): "
                 f"{checks['disagreement_fraction']:.1%}")
    files = _save_figure(fig, out, "figure1", dpi)
    plt.close(fig)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        files.append(flow_b.save(os.path.join(os.fspath(out), "figure1_b.npz")))
        files.append(flow_c.save(os.path.join(os.fspath(out), "figure1_c.npz")))
    timings["total"] = time.perf_counter() - start
    files += _write_json(out, "figure1.json", {"size": size, "config": cfg, "checks": checks, "timings": timings})
    return {"checks": checks, "files": files, "timings": timings, "results": {"b": flow_b, "c": flow_c},
            "surfaces": {"a": surf_a, "b": surf_b, "c": surf_c}}


# --------------------------------------------------------------------------------------------------
# Figures 2 and 3
# --------------------------------------------------------------------------------------------------


def normalize_by_median(raw: np.ndarray) -> np.ndarray:
    r"""Row-wise p_i(t)/med_t with med_t the median of {p_j(t) : p_j(t) ≥ 0} (Appendix A).

    ``raw``: (T, n) multiclass margins. Rows with no nonnegative margin, or a zero median, are NaN."""
    raw = np.asarray(raw, np.float64)
    out = np.full_like(raw, np.nan)
    for t, row in enumerate(raw):
        nonneg = row[row >= 0]
        if nonneg.size:
            med = float(np.median(nonneg))
            if med > 0:
                out[t] = row / med
    return out


def margin_checks(result: FlowResult, *, homogeneous: bool, tol: float = 1e-9) -> dict[str, Any]:
    r"""Convergence checks of a margin run.

    * ``change_first_quarter`` / ``change_last_quarter``: mean_i |q_i(b) − q_i(a)| of the
      median-normalized margins q between the save points a, b nearest to the ends of the first
      and last quarters of the ln(n/L) range [K_a, K_end], where K_a is the first save point with
      zero training error (so the normalization is stable); ``margins_converge`` = last < first.
    * ``alpha_tilde_nondecreasing`` (homogeneous only): α̃_{k+1} ≥ α̃_k − tol·|α̃_k| at consecutive
      save points with L < ℓ(0) (Lemma C.5); None for non-homogeneous nets.
    """
    d = result.diagnostics
    acc = np.asarray(d["accuracy"], np.float64)
    q = normalize_by_median(d["raw_margins"])
    classified = np.flatnonzero((np.asarray(d["train_error"]) == 0) & np.all(np.isfinite(q), axis=1))
    checks: dict[str, Any] = {"final_accuracy": float(acc[-1]), "final_train_error": float(d["train_error"][-1])}
    if classified.size >= 2:
        i0 = int(classified[0])
        k0, k1 = acc[i0], acc[-1]
        span = k1 - k0

        def nearest(value: float) -> int:
            cand = np.arange(i0, len(acc))
            return int(cand[np.argmin(np.abs(acc[cand] - value))])

        a1, b1 = i0, nearest(k0 + span / 4)
        a4, b4 = nearest(k1 - span / 4), len(acc) - 1
        first = float(np.mean(np.abs(q[b1] - q[a1])))
        last = float(np.mean(np.abs(q[b4] - q[a4])))
        checks.update(classified_at=float(k0), change_first_quarter=first, change_last_quarter=last,
                      margins_converge=bool(last < first))
    else:
        checks.update(classified_at=None, change_first_quarter=None, change_last_quarter=None, margins_converge=None)
    if homogeneous and "smoothed_margin" in d:
        ell0 = get_loss(result.config.get("loss", "cross_entropy")).ell_zero
        keep = np.asarray(d["log_loss"]) < math.log(ell0)
        at = np.asarray(d["smoothed_margin"], np.float64)[keep]
        diffs = np.diff(at)
        ok = bool(np.all(diffs >= -tol * np.abs(at[:-1]))) if at.size >= 2 else None
        checks.update(alpha_tilde_nondecreasing=ok, alpha_tilde_points=int(at.size),
                      alpha_tilde_min_increment=float(diffs.min()) if diffs.size else None)
    else:
        checks.update(alpha_tilde_nondecreasing=None)
    return checks


def margin_run(
    arch: str,
    size: str = "quick",
    *,
    data: str = "digits",
    data_dir: str | os.PathLike | None = None,
    sgd: bool = False,
    batch_size: int | None = None,
    progress: bool | None = None,
    seed: int = 0,
    n: int | None = None,
    target: float | None = None,
    steps: int | None = None,
    warmup: bool = True,
    rtol: float | None = None,
) -> FlowResult:
    r"""One margin trajectory: ``arch`` trained with the cross-entropy loss on ``data``.

    Flow (``warmup=True``, the default): two phases concatenated into one result (t and ζ offset):

    1. warm-up: full-batch normalized GD, W ← W − c_k (η/L)∇L (η = 1, update norm capped at 1),
       from the random initialisation until ln(n/L) ≥ ln n + 1. Then L < 1/e < ℓ(0) = ln 2, so
       Assumption 2.3 holds and every example is classified (ℓ(q_i) < ln 2 ⇒ p_i ≥ q_i > 0);
       ``config['warmup_points']`` counts its save points.
    2. the gradient flow in the accuracy clock (Tsit5) from there to ln(n/L) = ``target``, in
       progress segments.

    ``warmup=False``: the gradient flow from the random initialisation itself to ln(n/L) =
    ``target``, in progress segments (:func:`gradflow.progress.simulate_with_progress`), with the
    default solver, which slides along the ReLU kinks (:mod:`gradflow.sliding`). It is not the
    default because its transient (from L(W₀) ≥ ℓ(0) to L < ℓ(0)) is still too slow for the quick
    size: measured in benchmarks/results/figures.json (the quick Figure 2 from the initialisation,
    against a 2-minute target: both networks complete there, in more than that) and, for ``hcnn``
    on 100 digits, in the ``cost`` part of benchmarks/results/sliding.json.

    ``rtol``: the flow's relative tolerance (None: the size's, :data:`MARGIN_SIZES`), with
    atol = 10⁻³ rtol as in every size. Measured for the quick Figure 2 from the initialisation
    (``benchmarks/figures.py --rtol``, ``figure2_quick_rtol`` in benchmarks/results/figures.json):
    at 1e-4 the H-AlexNet's normalized margins end several times further from a 1e-6 run than at
    the quick size's 1e-5, and the DenseNet at 1e-4 is no faster than at 1e-5.

    SGD (``sgd=True``): normalized mini-batch SGD (η = 1, update norm ≤ 1) for ``steps``
    iterations with ``batch_size`` (default 512 in the full size; capped at n), stopping early
    at ln(n/L) = ``target`` (the paper's Figures 2–3 optimizer)."""

    cfg = MARGIN_SIZES[_check_size(size)]
    if arch not in ARCHITECTURES:
        raise bad_argument("arch", f"unknown architecture {arch!r}", f"Use one of {ARCHITECTURES}.")
    n = cfg["n"] if n is None else n
    rtol = check_positive_finite("rtol", rtol, allow_none=True, example="1e-5")
    if rtol is not None and sgd:
        raise bad_argument("rtol", "sets the flow's tolerance; sgd=True runs no flow", "Leave rtol out with sgd=True.")
    tol = dict(rtol=cfg["rtol"], atol=cfg["atol"]) if rtol is None else dict(rtol=rtol, atol=1e-3 * rtol)
    x, y = load_image_data(data, n=n, data_dir=data_dir, seed=seed)
    model = make_margin_model(arch, x.shape[1:], 10, seed=seed)
    n_ex = len(y)
    target = float(cfg["target"] if target is None else target)
    desc = f"{arch} on {data} (n={n_ex})"
    opt = normalized_gd(1.0, max_update_norm=1.0)
    with warnings.catch_warnings():
        # a random initialisation has L(W_0) ≥ ℓ(0): the runs start before Assumption 2.3 holds.
        warnings.filterwarnings("ignore", message=".*Assumption 2.3.*")
        if sgd:
            b = min(int(batch_size or cfg["batch_size"]), n_ex)
            return descend_with_progress(model, (x, y), opt, int(steps or cfg["steps"]), chunks=int(cfg["segments"]),
                                         progress=progress, desc=desc, loss="cross_entropy", batch_size=b,
                                         until_accuracy=target, seed=seed)
        if not warmup:
            flow = simulate_with_progress(model, (x, y), target, segments=int(cfg["segments"]), saves_per_segment=12,
                                          progress=progress, desc=desc, loss="cross_entropy", **tol,
                                          max_steps=400_000)
            return flow
        warm_target = min(math.log(n_ex) + 1.0, target)
        warm = simulate_descent(model, (x, y), opt, int(cfg["warmup_steps"]), loss="cross_entropy",
                                   until_accuracy=warm_target, save_every=max(1, int(cfg["warmup_steps"]) // 200))
        if warm.status == "failed" or float(warm.accuracy[-1]) < warm_target:
            raise RuntimeError(f"{arch}: the normalized-GD warm-up did not reach ln(n/L) = {warm_target:.3g} in "
                               f"{cfg['warmup_steps']} steps (reached {float(warm.accuracy[-1]):.3g}); status {warm.status}")
        if float(warm.accuracy[-1]) >= target:
            return warm
        flow = simulate_with_progress(warm.model, (x, y), target, segments=int(cfg["segments"]), saves_per_segment=12,
                                      progress=progress, desc=desc, loss="cross_entropy", solver="tsit5",
                                      **tol, max_steps=200_000)
    return concat_results([warm, flow], {"warmup": "normalized GD η=1, update norm ≤ 1",
                                         "warmup_points": len(warm), "warmup_end_accuracy": float(warm.accuracy[-1]),
                                         "n": n_ex})


def _first_below_ell_zero(result: FlowResult) -> float | None:
    """ln(n/L) at the first save point with L < ℓ(0), where Assumption 2.3 starts to hold (None if
    it never does)."""
    loss = result.config.get("loss")
    if loss is None:
        return None
    below = np.flatnonzero(np.asarray(result.log_loss) < math.log(get_loss(loss).ell_zero))
    return float(np.asarray(result.accuracy)[below[0]]) if below.size else None


def _plot_margins(ax, result: FlowResult, title: str) -> None:
    acc = np.asarray(result.accuracy)
    q = normalize_by_median(result.raw_margins)
    order = np.argsort(np.asarray(result.raw_margins)[-1])  # fixed order: final margin level
    rows = np.arange(len(acc))
    warm = int(result.config.get("warmup_points", 0) or 0)
    if warm:
        # discrete warm-up: ln(n/L) need not increase at every GD step; show its running-maximum rows
        # (so x is monotone) over a shaded band.
        head = rows[:warm][acc[:warm] >= np.maximum.accumulate(acc[:warm])]
        rows = np.concatenate([head, rows[warm:]])
        ax.axvspan(acc[0], acc[warm - 1], color="0.85", zorder=0, label="normalized-GD warm-up")
    below = _first_below_ell_zero(result)
    if below is not None:
        ax.axvline(below, color="tab:red", lw=0.9, ls="--", label="L < ℓ(0) (Assumption 2.3) from here")
    if warm or below is not None:
        ax.legend(loc="lower right", fontsize=8)
    colors = _matplotlib().cm.viridis(np.linspace(0, 1, len(order)))
    for rank, i in enumerate(order):
        ax.plot(acc[rows], q[rows, i], color=colors[rank], lw=0.6, alpha=0.8)
    ax.axhline(0.0, color="k", lw=0.8, ls=":")
    finite = q[np.isfinite(q)]
    if finite.size:
        lo, hi = np.percentile(finite, [1, 99])
        ax.set_ylim(min(lo, -0.5), max(hi, 2.0))
    ax.set(xlabel="ln(n/L)", ylabel="margin / median nonnegative margin", title=title)


def _margin_figure(number: int, archs: Sequence[str], size: str, *, out: str | os.PathLike | None, dpi: int,
                   run: dict[str, Any]) -> dict[str, Any]:
    """Figure ``number``: one :func:`margin_run` per architecture with the options ``run``, plotted
    side by side, saved with their results and checks."""
    data, sgd = run["data"], run["sgd"]
    start = time.perf_counter()
    if out is not None:
        os.makedirs(out, exist_ok=True)
    results, checks, timings, files = {}, {}, {}, []
    for arch in archs:
        t0 = time.perf_counter()
        r = margin_run(arch, size, **run)
        timings[arch] = time.perf_counter() - t0
        results[arch] = r
        checks[arch] = margin_checks(r, homogeneous=(arch == "hcnn" and not sgd))
        checks[arch]["status"] = r.status
        if out is not None:
            files.append(r.save(os.path.join(os.fspath(out), f"figure{number}_{arch}.npz")))
    plt = _matplotlib()
    fig, axes = plt.subplots(1, len(archs), figsize=(6.2 * len(archs), 4.4), constrained_layout=True, squeeze=False)
    for k, (ax, arch) in enumerate(zip(axes[0], archs, strict=True)):
        label = f"({chr(ord('a') + k)}) " if len(archs) > 1 else ""
        _plot_margins(ax, results[arch], label + _TITLES[arch])
    how = "normalized SGD" if sgd else "gradient flow"
    n_used = results[archs[0]].config.get("n")
    title = f"Figure {number}: margins of all {n_used} {data} examples ({how}), sorted by final margin"
    if len(archs) == 1:  # one panel is too narrow for the title on one line
        title = title.replace(" (", "\n(", 1)
    fig.suptitle(title)
    files = _save_figure(fig, out, f"figure{number}", dpi) + files
    plt.close(fig)
    timings["total"] = time.perf_counter() - start
    files += _write_json(out, f"figure{number}.json", {"size": size, "data": data, "sgd": sgd, "checks": checks, "timings": timings})
    return {"checks": checks, "files": files, "timings": timings, "results": results}


def figure2(size: str = "quick", *, out: str | os.PathLike | None = None, data: str = "digits",
            data_dir: str | os.PathLike | None = None, sgd: bool = False, batch_size: int | None = None,
            progress: bool | None = None, seed: int = 0, n: int | None = None, target: float | None = None,
            steps: int | None = None, dpi: int = 110, warmup: bool = True) -> dict[str, Any]:
    """Figure 2: margins of (a) the homogeneous H-AlexNet and (b) a DenseNet-style net against
    ln(n/L). Writes ``figure2.png``/``.pdf``, ``figure2_<arch>.npz`` and ``figure2.json`` to
    ``out``. Returns ``checks`` per architecture (see :func:`margin_checks`), ``files``,
    ``timings`` and ``results``. The transient is crossed with normalized GD first, then the flow
    follows; ``warmup=False`` follows the flow from the random initialisation (see :func:`margin_run`)."""
    return _margin_figure(2, ("hcnn", "densenet"), _check_size(size), out=out, dpi=dpi, run=dict(
        data=data, data_dir=data_dir, sgd=sgd, batch_size=batch_size, progress=progress, seed=seed, n=n, target=target,
        steps=steps, warmup=warmup))


def figure3(size: str = "quick", *, out: str | os.PathLike | None = None, data: str = "digits",
            data_dir: str | os.PathLike | None = None, sgd: bool = False, batch_size: int | None = None,
            progress: bool | None = None, seed: int = 0, n: int | None = None, target: float | None = None,
            steps: int | None = None, dpi: int = 110, warmup: bool = True) -> dict[str, Any]:
    """Figure 3: margins of a ResNet-style net against ln(n/L) (as :func:`figure2`)."""
    return _margin_figure(3, ("resnet",), _check_size(size), out=out, dpi=dpi, run=dict(
        data=data, data_dir=data_dir, sgd=sgd, batch_size=batch_size, progress=progress, seed=seed, n=n, target=target,
        steps=steps, warmup=warmup))


# --------------------------------------------------------------------------------------------------
# the README's PNGs (gradflow reproduce docs)
# --------------------------------------------------------------------------------------------------


def write_docs_pngs(out: str | os.PathLike = "docs", size: str = "quick", *, progress: bool | None = None,
                    dpi: int = 60) -> dict[str, Any]:
    """Small PNGs of Figures 1–3 for the README: ``out/figure1.png``, ``figure2.png``, ``figure3.png``.

    Each figure runs at ``size`` into a temporary directory and only its PNG is copied to ``out``
    (the PDFs, ``.npz`` results and JSON stay out of the docs). At dpi 60 the three PNGs stay small
    enough to commit. Returns ``checks`` ({1: ..., 2: ..., 3: ...}, each figure's checks) and
    ``files`` (the PNGs written)."""
    checks: dict[int, Any] = {}
    files: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for number, fn in ((1, figure1), (2, figure2), (3, figure3)):
            res = fn(_check_size(size), out=tmp, progress=progress, dpi=dpi)
            os.makedirs(out, exist_ok=True)
            dst = os.path.join(os.fspath(out), f"figure{number}.png")
            shutil.copyfile(os.path.join(tmp, f"figure{number}.png"), dst)
            checks[number] = res["checks"]
            files.append(dst)
    return {"checks": checks, "files": files}
