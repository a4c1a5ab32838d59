"""Linear logistic regression on iris_binary: the direction of w_t → ū at the O(1/ln t) rate.

For a linear predictor on separable data, gradient flow on the logistic loss satisfies
w_t = ū ln t/γ + ρ + o(1) (Soudry et al., 2017), so the angle ∠(w_t, ū) decays like c/ln t. The
script integrates the flow in the accuracy clock (ln(n/L), implicit Kvaerno5: iris is stiff in this
clock, explicit Tsit5 stalls) from a separating w_0 at a sizeable angle from ū, and plots

* the angle against ln(n/L) and against ln t, with the fitted reference c/ln t (c by least squares
  on the second half of the run, in log space);
* the certified bound arccos(γ(w_t)/γ): for any w of margin γ(w) = min_i y_i⟨x_i, w⟩/‖w‖ > 0,
  cos∠(w, ū) ≥ γ(w)/γ (ū/γ is the minimum-norm point of {u: y_i⟨x_i, u⟩ ≥ 1}).

Writes linear_logistic.png and linear_logistic.json.

Run: python examples/linear_logistic.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow import theory
from gradflow.maxmargin import svm_direction


def initial_direction(x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """A separating unit vector at the largest angle from ū found (margin ≥ γ/10)."""
    svm = svm_direction(x, y)
    ub, gamma = svm.direction, svm.margin
    z = y[:, None] * x
    rng = np.random.default_rng(seed)
    best, best_phi = ub, 0.0
    for _ in range(500):
        v = rng.standard_normal(x.shape[1])
        v -= (v @ ub) * ub
        v /= np.linalg.norm(v)
        for phi in np.linspace(1.0, 0.0, 101)[:-1]:
            if phi <= best_phi:
                break
            u = np.cos(phi) * ub + np.sin(phi) * v
            if np.min(z @ u) >= gamma / 10:
                best, best_phi = u, phi
                break
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 2 minutes on 2 cores)")
    parser.add_argument("--out", default=".", help="directory for the PNG and JSON")
    parser.add_argument("--target", type=float, default=None, help="final ln(n/L) (default 800, quick 300)")
    args = parser.parse_args(argv)
    target = args.target or (300.0 if args.quick else 800.0)
    num_save = 40 if args.quick else 100

    x, y = gf.datasets.iris_binary()
    n, d = x.shape
    svm = svm_direction(x, y)
    u0 = initial_direction(x, y)
    # scale so that L(w_0) = Σ ln(1 + e^{−p_i}) < ln 2 = ℓ(0)
    z = y[:, None] * x
    scale = 1.0
    while np.sum(np.logaddexp(0.0, -scale * (z @ u0))) >= 0.5 * np.log(2.0):
        scale *= 1.1
    model = gf.Linear(d, key=jax.random.PRNGKey(0))
    with gf.x64():
        model = eqx.tree_at(lambda m: m.w, model, jnp.asarray(scale * u0))
    start = time.perf_counter()
    res = gf.simulate_flow(
        model, (x, y), loss="logistic", clock="accuracy", until_accuracy=target, solver="kvaerno5",
        rtol=1e-6, atol=1e-9, num_save=num_save, save_params=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    angle = theory.direction_angle(res, svm.direction)
    w = res.params_flat
    gw = np.min(z @ w.T, axis=0) / np.linalg.norm(w, axis=1)
    certified = np.arccos(np.clip(gw / svm.margin, -1.0, 1.0))
    log_t = np.asarray(res.log_t)
    acc = np.asarray(res.accuracy)
    late = (np.arange(len(acc)) >= len(acc) // 2) & np.isfinite(log_t) & (log_t > 1.0)
    inv = 1.0 / log_t[late]
    # least squares in log space: ln θ ≈ ln c − ln ln t  ⇒  ln c = mean(ln θ + ln ln t)
    c = float(np.exp(np.mean(np.log(angle[late]) - np.log(inv))))
    ratio = angle[late] * log_t[late]
    drift = theory.saliency_drift(res, model, x[:5])
    print(
        f"iris: γ = {svm.margin:.6g}, ∠(w_0, ū) = {angle[0]:.4f}; {res.status} to ln(n/L) = {acc[-1]:.1f} in {wall:.1f}s"
    )
    print(f"final ∠(w, ū) = {angle[-1]:.4e} (certified ≤ {certified[-1]:.4e}); ln t = {log_t[-1]:.1f}")
    print(f"fitted c/ln t: c = {c:.4f}; θ·ln t over the second half ∈ [{ratio.min():.4f}, {ratio.max():.4f}]")
    print(f"saliency of a linear model is w/‖w‖: final drift between save points {drift['step'][-1].max():.2e} rad")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), constrained_layout=True)
    ax = axes[0]
    ax.loglog(acc, angle, label="∠(w_t, ū)")
    ax.loglog(acc, certified, ":", label="certified arccos(γ(w_t)/γ)")
    ax.set_xlabel("ln(n/L)")
    ax.legend()
    ax.set_title("angle to the SVM direction vs optimization accuracy")
    ax = axes[1]
    fin = np.isfinite(log_t) & (log_t > 0)
    ax.loglog(log_t[fin], angle[fin], label="∠(w_t, ū)")
    ax.loglog(log_t[fin], c / log_t[fin], "--", label=f"fit {c:.3f}/ln t")
    ax.set_xlabel("ln t")
    ax.legend()
    ax.set_title("O(1/ln t) rate (Soudry et al., 2017)")
    ax = axes[2]
    ax.semilogx(log_t[fin], angle[fin] * log_t[fin])
    ax.set_xlabel("ln t")
    ax.set_title("θ·ln t (→ constant at the 1/ln t rate)")
    fig.suptitle("linear logistic regression on iris (setosa vs versicolor), gradient flow")
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "linear_logistic.png")
    fig.savefig(png, dpi=110)
    out = os.path.join(args.out, "linear_logistic.json")
    summary = {
        "gamma": svm.margin, "u_bar": svm.direction.tolist(), "status": res.status, "wall_time_s": wall,
        "accuracy": acc.tolist(), "log_t": [float(v) if np.isfinite(v) else None for v in log_t],
        "angle": angle.tolist(), "certified_bound": certified.tolist(), "fit_c": c,
        "angle_times_log_t_second_half": [float(ratio.min()), float(ratio.max())],
    }  # fmt: skip
    with open(out, "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"wrote {png} and {out}")


if __name__ == "__main__":
    main()
