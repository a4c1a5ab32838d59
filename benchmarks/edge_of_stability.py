r"""When does GD follow the flow? Sharpness λ_max(∇²L) along the flow and GD at three step sizes.

From one random initialization per problem:

(a) the ``hcnn`` CNN of ``gradflow.figures.make_margin_model`` on ``--n-digits`` digits (cross-entropy);
(b) a ReLU MLP (30 → 32 → 1) on the breast-cancer data (``gradflow.datasets.breast_cancer_binary``,
    logistic loss).

For each, the flow dW/dt = −∇L (the reference; ``simulate_flow`` records λ_max(∇²L) at every save
point) runs to ``t_end``; then GD runs to the same t at three step sizes chosen from the flow's
measured sharpness λ* = max_t λ_max(W(t)): η = 0.8·2/λ* (below 2/λ_max all the way), η = 2/(0.5 λ*)
and η = 2/(0.2 λ*) (both cross it where the flow's sharpness exceeds 2/η). Reported per GD run: the
edge of stability (first iteration with λ_max(∇²L(W_k)) > 2/η, checked at every iteration), the
distance ‖W_GD(t) − W(t)‖ (absolute and relative) and the direction angle at that moment and at the
end, the sharpness GD itself sees, and ln(n/L) at the end, beside the flow's.

Cost choices (2-core CPU): the hcnn flow from a random start is kink-limited
(``benchmarks/results/nonsmooth.json``, n = 100 to t = 0.01: Tsit5 with diffrax's PID controller
at rtol 1e-5 took 3,543 gradient evaluations for an error of 9.3e-5, Bosh3 with the kink controller
at rtol 1e-4 246 for 9.4e-5), so the flow runs with Bosh3 at rtol 1e-4,
n = 50 digits and t ≤ 0.3.

Writes ``benchmarks/results/edge_of_stability.json`` and ``docs/edge_of_stability.png``.

    python benchmarks/edge_of_stability.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import jax
import numpy as np

import gradflow as gf

warnings.filterwarnings("ignore", message=".*Assumption 2.3.*")

HERE = os.path.dirname(os.path.abspath(__file__))
FACTORS = (("below", 0.8), ("cross 2x", 2.0), ("cross 5x", 5.0))  # η = factor · 2/λ*


def _problem(name: str, n_digits: int):
    if name == "hcnn":
        x, y = gf.datasets.digits(n=n_digits, seed=0)
        return gf.figures.make_margin_model("hcnn", x.shape[1:], seed=0), (x, y), "cross_entropy"
    x, y = gf.datasets.breast_cancer_binary()
    return gf.ReLUMLP((x.shape[1], 32, 1), key=jax.random.PRNGKey(0)), (x, y), "logistic"


def run(name: str, t_end: float, *, n_digits: int, solver: str, rtol: float, atol: float, num_save: int) -> dict:
    model, data, loss = _problem(name, n_digits)
    save_t = np.linspace(0.0, t_end, num_save)
    start = time.perf_counter()
    flow = gf.simulate_flow(model, data, t_end, loss=loss, solver=solver, rtol=rtol, atol=atol, save_at=save_t,
                            save_params=True, max_steps=2_000_000)
    flow_wall = time.perf_counter() - start
    lam = np.exp(flow.log_sharpness)
    lam_star = float(np.nanmax(lam))
    out = {
        "problem": name, "n": int(flow.config["n"]), "params": int(flow.params_flat.shape[1]), "loss": loss,
        "solver": solver, "rtol": rtol, "atol": atol, "t_end": t_end, "status": flow.status,
        "flow": {
            "t": flow.t.tolist(), "sharpness": lam.tolist(), "accuracy": flow.accuracy.tolist(),
            "gradient_evaluations": flow.stats["gradient_evaluations"], "sharpness_hvps": flow.stats["sharpness_hvps"],
            "wall_s": flow_wall, "sharpness_max": lam_star, "t_at_sharpness_max": float(flow.t[np.nanargmax(lam)]),
            "sharpness_start": float(lam[0]), "sharpness_end": float(lam[-1]), "sharpness_min": float(np.nanmin(lam)),
        },
        "gd": [],
    }
    print(f"[{name}] n={out['n']} k={out['params']} flow {flow.status}: {flow.stats['gradient_evaluations']} evals, "
          f"{flow.stats['sharpness_hvps']} HVPs, {flow_wall:.1f} s; λ_max {lam[0]:.4g} → max {lam_star:.4g} "
          f"(t={out['flow']['t_at_sharpness_max']:.3g}) → {lam[-1]:.4g}", flush=True)
    for label, factor in FACTORS:
        eta = factor * 2.0 / lam_star
        steps = int(round(t_end / eta))
        its = np.unique(np.round(save_t / eta).astype(int).clip(0, steps))
        start = time.perf_counter()
        gd = gf.simulate_descent(model, data, "gd", steps, learning_rate=eta, loss=loss, save_at=its, save_params=True)
        wall = time.perf_counter() - start
        cmp = gf.compare(flow, gd)
        row = {
            "label": label, "eta": eta, "two_over_eta": 2.0 / eta, "steps": steps, "status": gd.status,
            "edge_step": gd.edge_step, "edge_t": gd.stats["edge_t"], "wall_s": wall,
            "flow_sharpness_above_2_over_eta": bool(np.nanmax(lam) > 2.0 / eta),
            "t": gd.t.tolist(), "sharpness": np.exp(gd.log_sharpness).tolist(), "accuracy": gd.accuracy.tolist(),
            "distance_t": cmp["times"].tolist(),
            "distance": None if cmp["param_distance"] is None else cmp["param_distance"].tolist(),
            "relative_distance": None if cmp["relative_param_distance"] is None else cmp["relative_param_distance"].tolist(),
            "at_edge": cmp["edge"], "at_end": cmp["end"],
            "final_accuracy": float(gd.accuracy[-1]), "flow_final_accuracy": float(flow.accuracy[-1]),
            "gd_sharpness_max": float(np.nanmax(np.exp(gd.log_sharpness))),
            "gd_sharpness_end": float(np.exp(gd.log_sharpness[-1])),
        }
        out["gd"].append(row)
        edge = f"edge at k={gd.edge_step} (t={gd.stats['edge_t']:.4g})" if gd.edge_step is not None else "never at the edge"
        at_edge = (f"; at the edge ‖ΔW‖/‖W‖={cmp['edge']['relative_param_distance']:.3g}, angle={cmp['edge']['angle']:.3g}"
                   if cmp["edge"] else "")
        print(f"  GD η={eta:.4g} ({label}, 2/η={2 / eta:.4g}, {steps} steps, {wall:.1f} s, {gd.status}): {edge}{at_edge}; "
              f"end ‖ΔW‖/‖W‖={cmp['end']['relative_param_distance']:.3g}, angle={cmp['end']['angle']:.3g}; "
              f"ln(n/L) GD {row['final_accuracy']:.4g} vs flow {row['flow_final_accuracy']:.4g}; "
              f"GD sharpness max {row['gd_sharpness_max']:.4g}, end {row['gd_sharpness_end']:.4g}", flush=True)
    return out


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 3, figsize=(15, 4.2 * len(results)), constrained_layout=True, squeeze=False)
    colors = ("tab:green", "tab:orange", "tab:red")
    for row, res in zip(axes, results, strict=True):
        f = res["flow"]
        row[0].semilogy(f["t"], f["sharpness"], "k", lw=2, label="flow λ_max(∇²L)")
        row[2].plot(f["t"], f["accuracy"], "k", lw=2, label="flow")
        for g, c in zip(res["gd"], colors, strict=True):
            lab = f"GD η={g['eta']:.3g} ({g['label']})"
            row[0].semilogy(g["t"], g["sharpness"], color=c, label=lab)
            row[0].axhline(g["two_over_eta"], color=c, ls="--", lw=1)
            if g["edge_t"] is not None:
                row[0].axvline(g["edge_t"], color=c, ls=":", lw=1)
            if g["distance"] is not None:
                row[1].semilogy(g["distance_t"], np.maximum(g["relative_distance"], 1e-16), color=c, label=lab)
            row[2].plot(g["t"], g["accuracy"], color=c, label=lab)
        row[0].set_title(f"{res['problem']} (n={res['n']}, k={res['params']}): sharpness, 2/η dashed, edge dotted")
        row[1].set_title("‖W_GD(t) − W_flow(t)‖ / ‖W_flow(t)‖")
        row[2].set_title("ln(n/L)")
        for a in row:
            a.set_xlabel("t")
            a.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-digits", type=int, default=50)
    parser.add_argument("--hcnn-t", type=float, default=0.3)
    parser.add_argument("--mlp-t", type=float, default=20.0)
    parser.add_argument("--solver", default="bosh3")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--num-save", type=int, default=61)
    parser.add_argument("--only", choices=("hcnn", "mlp"), default=None)
    args = parser.parse_args()
    results = []
    for name, t_end in (("hcnn", args.hcnn_t), ("mlp", args.mlp_t)):
        if args.only in (None, name):
            results.append(run(name, t_end, n_digits=args.n_digits, solver=args.solver, rtol=args.rtol,
                               atol=args.rtol * 1e-3, num_save=args.num_save))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    suffix = "" if args.only is None else f"_{args.only}"
    with open(os.path.join(HERE, "results", f"edge_of_stability{suffix}.json"), "w") as fh:
        json.dump({"results": results, "versions": gf.flow._versions(), "args": vars(args)}, fh, indent=1)
    docs = os.path.join(os.path.dirname(HERE), "docs")
    os.makedirs(docs, exist_ok=True)
    plot(results, os.path.join(docs, f"edge_of_stability{suffix}.png"))


if __name__ == "__main__":
    main()
