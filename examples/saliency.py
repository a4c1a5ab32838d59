"""Saliency maps converge in direction (Section 1.2): the bias-free H-AlexNet-style CNN on the 8×8
digits, warmed up by normalized GD until every example is classified, then the gradient flow in
the accuracy clock. Plots the normalized input gradients ∇_x Φ_y(x_i; W_t)/‖·‖ of a few examples
at several ln(n/L), and their angular change against ln(n/L). Writes saliency.png and
saliency.json. ``--quick`` runs in about a minute on 2 CPU cores.
"""

import argparse
import json
import math
import os
import warnings

import numpy as np

import gradflow as gf
from gradflow.figures import load_image_data, make_margin_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 examples to ln(n/L) = 25 (default: 300 to 40)")
    parser.add_argument("--out", default=".", help="output directory")
    parser.add_argument("--examples", type=int, default=4, help="how many examples to show")
    args = parser.parse_args(argv)
    n, target = (100, 25.0) if args.quick else (300, 40.0)
    x, y = load_image_data("digits", n=n, seed=0)
    model = make_margin_model("hcnn", x.shape[1:], 10, seed=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Assumption 2.3.*")
        warm = gf.simulate_descent(model, (x, y), gf.normalized_gd(1.0, max_update_norm=1.0), 5000,
                                   loss="cross_entropy", until_accuracy=math.log(n) + 1.0, save_every=100)
    start = float(warm.accuracy[-1])
    flow = gf.simulate_flow(warm.model, (x, y), clock="accuracy", until_accuracy=target, solver="tsit5", rtol=1e-6,
                            atol=1e-9, save_at=np.linspace(start, target, 12), save_params=True, loss="cross_entropy")
    k = args.examples
    labels = np.asarray(y[:k])
    # the gradient of the logit of each example's own class: Φ_y(x_i; W)
    drift = {c: gf.theory.saliency_drift(flow, warm.model, x[:k][labels == c], output_index=int(c)) for c in np.unique(labels)}
    maps = np.zeros((len(flow),) + x[:k].shape)
    step = np.zeros((len(flow) - 1, k))
    for c, d in drift.items():
        maps[:, labels == c] = d["maps"]
        step[:, labels == c] = d["step"]
    acc = flow.accuracy
    rate = step / np.diff(acc)[:, None]  # radians per unit of ln(n/L)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [0, len(acc) // 2, len(acc) - 1]
    fig, axes = plt.subplots(k, len(cols) + 1, figsize=(3 * (len(cols) + 1), 2.6 * k), constrained_layout=True)
    for i in range(k):
        for j, c in enumerate(cols):
            m = maps[c, i, 0]
            lim = np.abs(m).max()
            axes[i, j].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            axes[i, j].set_title(f"digit {labels[i]}, ln(n/L) = {acc[c]:.3g}", fontsize=8)
        axes[i, -1].semilogy(acc[1:], np.maximum(rate[:, i], 1e-16))
        axes[i, -1].set_xlabel("ln(n/L)")
        axes[i, -1].set_title("map rotation per unit ln(n/L) [rad]", fontsize=8)
    fig.suptitle("normalized saliency maps ∇_x Φ_y(x; W_t)/‖·‖ of the homogeneous CNN along the flow")
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "saliency.png")
    fig.savefig(png, dpi=100)
    summary = {
        "n": n,
        "target": target,
        "status": flow.status,
        "accuracy": acc.tolist(),
        "rotation_rate_first": rate[0].tolist(),
        "rotation_rate_last": rate[-1].tolist(),
        "rate_decreased_for_all_examples": bool(np.all(rate[-1] < rate[0])),
        "alpha_tilde_nondecreasing": bool(np.all(np.diff(flow.smoothed_margin) >= -1e-9 * np.abs(flow.smoothed_margin[1:]))),
    }
    with open(os.path.join(args.out, "saliency.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
