r"""Gradient flow versus discrete optimizers on three homogeneous problems.

Problems: the Figure 1 setup (two-layer squared-ReLU net with fixed random signs on 2-D points
labelled by a random network with a bias, low-margin points deleted, embedded in R³ by appending a
constant 1; ``gradflow.datasets.appendix_a_synthetic`` when it exists), a linear predictor and a
depth-3 deep linear network on separable Gaussian data.

(a) GD is Euler's method on dW/dt = −∇L: the error E(η) = max_j ‖W_{k_j} − W(k_j η)‖ over a fixed
    time window should scale like η; the fitted log-log slope of E against η is printed (≈ 1).
(b) The angle between GD's, normalized GD's and the flow's directions W/‖W‖ at matched
    ln(n/L) = 5, 10, 20 (``gradflow.compare``).
(c) The cost (gradient evaluations, warm wall time) to reach ln(n/L) = 10, 30, 100, 1000 for the
    flow (``clock="accuracy"``, Tsit5 so that gradient evaluations are counted exactly), plain GD (within a step budget) and normalized GD.

Writes ``benchmarks/results/flow_vs_gd.json`` and ``flow_vs_gd.png``. ``--quick`` runs in about
two minutes on two CPU cores (small width, few η, small budgets).

    python benchmarks/flow_vs_gd.py --quick
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import time
import warnings

import jax
import numpy as np

import gradflow
from gradflow.compare import compare
from gradflow.descent import normalized_gd, simulate_descent
from gradflow.result import FlowResult

warnings.filterwarnings("ignore", message=".*Assumption 2.3.*")

_FLOW_HAS_SAVE_PARAMS = "save_params" in inspect.signature(gradflow.simulate_flow).parameters
LEVELS_ANGLE = (5.0, 10.0, 20.0)
LEVELS_COST = (10.0, 30.0, 100.0, 1000.0)
NUM_SAVE = 65  # every descent run saves at 65 iterations: one compilation per (problem, optimizer)
FLOW_MAX_STEPS = 200_000


def _saves(steps: int) -> np.ndarray:
    """NUM_SAVE distinct save iterations in [0, steps ≥ NUM_SAVE − 1]: 0..31, then geometric up to steps."""
    head = NUM_SAVE // 2
    if steps < 1000:
        return np.round(np.linspace(0, steps, NUM_SAVE)).astype(int)
    tail = np.round(np.geomspace(head, steps, NUM_SAVE - head)).astype(int)
    its = np.concatenate([np.arange(head), tail])
    assert len(np.unique(its)) == NUM_SAVE, its
    return its


# ----------------------------------------------------------------------------------------- data


def _appendix_a_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Appendix A data: 2-D points labelled by a random ReLU teacher with a bias, low-margin points
    deleted, a constant 1 appended (gradflow.datasets.appendix_a_synthetic)."""
    from gradflow.datasets import appendix_a_synthetic

    return appendix_a_synthetic(n=n, seed=seed)


def _gaussian_separable(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    x = rng.standard_normal((n, d))
    y = np.where(x @ w >= 0, 1.0, -1.0)
    return x + 0.3 * y[:, None] * w, y


def _problems(quick: bool):
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    n_fig1 = 24 if quick else 60
    width = 16 if quick else 200
    x1, y1 = _appendix_a_data(n_fig1, 0)
    x2, y2 = _gaussian_separable(20, 5, 1)
    return {
        "squared_relu": dict(model=gradflow.TwoLayerSquaredReLU(3, width, key=k1, init_scale=0.3), data=(x1, y1), eta=0.01, ngd_eta=0.2),
        "linear": dict(model=gradflow.Linear(5, key=k2), data=(x2, y2), eta=0.02, ngd_eta=0.2),
        "deep_linear": dict(model=gradflow.DeepLinear(3, (5, 4, 4), key=k3), data=(x2, y2), eta=0.02, ngd_eta=0.2),
    }


# ------------------------------------------------------------------------------------- helpers


def _flat(result: FlowResult) -> np.ndarray:
    return np.concatenate([np.ravel(v) for v in result.params.values()])


def _flow_params_at_times(model, data, times: np.ndarray) -> np.ndarray:
    """W(t_j) of the flow (tight tolerances), one row per time."""
    if _FLOW_HAS_SAVE_PARAMS:
        r = gradflow.simulate_flow(model, data, float(times[-1]), rtol=1e-10, atol=1e-12, save_at=times, save_params=True)
        return np.asarray(r.diagnostics["params_flat"])
    rows = []
    for t in times:  # one run per time: only the final parameters are stored today
        r = gradflow.simulate_flow(model, data, float(t), rtol=1e-10, atol=1e-12, save_at=np.linspace(0, t, 4), check_degree=False)
        rows.append(_flat(r))
    return np.stack(rows)


def _flow_at_levels(model, data, levels) -> FlowResult:
    """A FlowResult holding the flow's accuracy and params_flat at the given ln(n/L) levels."""
    rows, accs, margins, raws, ts = [], [], [], [], []
    for k in levels:
        r = gradflow.simulate_flow(model, data, clock="accuracy", solver="tsit5", until_accuracy=float(k), num_save=8, max_steps=FLOW_MAX_STEPS, check_degree=k == levels[0])
        rows.append(_flat(r))
        accs.append(r.accuracy[-1])
        margins.append(r.diagnostics["margins"][-1])
        raws.append(r.raw_margins[-1])
        ts.append(r.t[-1])
    diag = dict(accuracy=np.array(accs), params_flat=np.stack(rows), margins=np.stack(margins), raw_margins=np.stack(raws), t=np.array(ts))
    return FlowResult(diagnostics=diag, status="completed", reason="", stats={}, config={})


def _slope(etas, errors) -> float:
    etas, errors = np.asarray(etas, float), np.asarray(errors, float)
    ok = np.isfinite(errors) & (errors > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(etas[ok]), np.log(errors[ok]), 1)[0])


# --------------------------------------------------------------------------------- experiments


def part_a(prob, quick: bool) -> dict:
    """Euler error max_j ‖W_{k_j} − W(k_j η)‖ over the window [0, 64·η0], at 64 equally spaced times."""
    eta0, model, data = prob["eta"], prob["model"], prob["data"]
    halvings = 3 if quick else 5
    etas = [eta0 / 2**i for i in range(halvings)]
    window = (NUM_SAVE - 1) * eta0
    checkpoints = window * np.arange(1, NUM_SAVE) / (NUM_SAVE - 1)
    w_flow = _flow_params_at_times(model, data, checkpoints)
    errors = []
    for i, eta in enumerate(etas):
        steps = (NUM_SAVE - 1) * 2**i
        r = simulate_descent(model, data, "gd", steps, learning_rate=eta, save_at=np.linspace(0, steps, NUM_SAVE).astype(int), save_params=True, check_degree=False)
        if not r.ok:
            errors.append(float("nan"))
            continue
        w_gd = np.asarray(r.diagnostics["params_flat"])[1:]
        errors.append(float(np.max(np.linalg.norm(w_gd - w_flow, axis=1))))
    return {"etas": etas, "window": window, "errors": errors, "slope": _slope(etas, errors)}


def part_b(prob, quick: bool, flow_levels: FlowResult) -> dict:
    model, data, eta = prob["model"], prob["data"], prob["eta"]
    budget = 20_000 if quick else 500_000
    out = {}
    gd = simulate_descent(model, data, "gd", budget, learning_rate=eta, until_accuracy=max(LEVELS_ANGLE), save_at=_saves(budget), save_params=True, check_degree=False)
    # a small normalized step (a time change of the flow: dW/ds = −∇L/L) to follow the flow's path
    ngd = simulate_descent(model, data, normalized_gd(0.02, max_update_norm=0.5), budget, until_accuracy=max(LEVELS_ANGLE) + 1, save_at=_saves(budget), save_params=True, check_degree=False)
    for name, r in (("gd", gd), ("normalized_gd", ngd)):
        c = compare(r, flow_levels, accuracies=LEVELS_ANGLE)
        out[name] = {
            "angle": [None if not np.isfinite(v) else float(v) for v in c["angle"]],
            "margin_wasserstein": [None if not np.isfinite(v) else float(v) for v in c["margin_wasserstein"]],
            "reached_accuracy": float(r.accuracy[-1]),
        }
    out["levels"] = list(LEVELS_ANGLE)
    return out


def part_c(prob, quick: bool) -> dict:
    model, data, eta = prob["model"], prob["data"], prob["eta"]
    budget = 20_000 if quick else 1_000_000
    out = {"levels": list(LEVELS_COST), "gd_budget": budget, "gd_eta": eta, "normalized_gd_eta": prob["ngd_eta"], "flow": [], "gd": [], "normalized_gd": []}
    nopt = normalized_gd(prob["ngd_eta"], max_update_norm=1.0)

    # warm-up calls compile every loop once (targets and budgets are traced values), so the wall
    # times below exclude compilation
    flow_kw = dict(clock="accuracy", solver="tsit5", num_save=8, max_steps=FLOW_MAX_STEPS, check_degree=False)
    gradflow.simulate_flow(model, data, until_accuracy=LEVELS_COST[0], **flow_kw)
    desc_kw = dict(save_params=True, check_degree=False)
    simulate_descent(model, data, "gd", NUM_SAVE - 1, learning_rate=eta, until_accuracy=LEVELS_COST[0], save_at=_saves(NUM_SAVE - 1), **desc_kw)
    simulate_descent(model, data, nopt, NUM_SAVE - 1, until_accuracy=LEVELS_COST[0], save_at=_saves(NUM_SAVE - 1), **desc_kw)
    gd_reached = True
    for k in LEVELS_COST:
        r = gradflow.simulate_flow(model, data, until_accuracy=k, **flow_kw)
        out["flow"].append({"ok": r.ok and r.accuracy[-1] >= k * (1 - 1e-5), "gradient_evaluations": r.stats["gradient_evaluations"], "wall_time": r.stats["wall_time"], "status": r.status})
        if gd_reached:
            g = simulate_descent(model, data, "gd", budget, learning_rate=eta, until_accuracy=k, save_at=_saves(budget), **desc_kw)
            gd_reached = g.status == "stopped at target"
            entry = {"ok": gd_reached, "gradient_evaluations": g.stats["gradient_evaluations"], "wall_time": g.stats["wall_time"], "reached_accuracy": float(g.accuracy[-1])}
            if not gd_reached:
                entry["note"] = f"not reached in budget ({budget} steps; ln(n/L) = {g.accuracy[-1]:.3g})"
        else:
            entry = {"ok": False, "note": "not reached in budget (a lower level was not reached)"}
        out["gd"].append(entry)
        r = simulate_descent(model, data, nopt, 10 * budget, until_accuracy=k, save_at=_saves(10 * budget), **desc_kw)
        out["normalized_gd"].append({"ok": r.status == "stopped at target", "gradient_evaluations": r.stats["gradient_evaluations"], "wall_time": r.stats["wall_time"]})
    return out


# ------------------------------------------------------------------------------------- output


def _clean(o):
    """JSON-safe copy: NaN/inf → None, numpy scalars → Python numbers."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["problems"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in names:
        a = results["problems"][name]["a"]
        axes[0].loglog(a["etas"], a["errors"], "o-", label=f"{name} (slope {a['slope']:.2f})")
        b = results["problems"][name]["b"]
        for opt, style in (("gd", "o-"), ("normalized_gd", "s--")):
            ang = [np.nan if v is None else v for v in b[opt]["angle"]]
            axes[1].semilogy(b["levels"], ang, style, label=f"{name} {opt}")
        c = results["problems"][name]["c"]
        for opt, style in (("flow", "o-"), ("gd", "x-"), ("normalized_gd", "s--")):
            ev = [e["gradient_evaluations"] if e.get("ok") else np.nan for e in c[opt]]
            axes[2].loglog(c["levels"], ev, style, label=f"{name} {opt}")
    axes[0].set(xlabel="η", ylabel="max ‖W_k − W(kη)‖", title="(a) GD vs flow over a time window")
    axes[1].set(xlabel="ln(n/L)", ylabel="angle (rad)", title="(b) direction vs flow at matched ln(n/L)")
    axes[2].set(xlabel="target ln(n/L)", ylabel="gradient evaluations", title="(c) cost to reach ln(n/L)")
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, ~2 minutes on 2 CPU cores")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--only", nargs="*", default=None, help="problem names to run")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    results = {"quick": args.quick, "flow_has_save_params": _FLOW_HAS_SAVE_PARAMS, "problems": {}}
    for name, prob in _problems(args.quick).items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        flow_levels = _flow_at_levels(prob["model"], prob["data"], LEVELS_ANGLE)
        res = {"a": part_a(prob, args.quick), "b": part_b(prob, args.quick, flow_levels), "c": part_c(prob, args.quick)}
        res["seconds"] = time.perf_counter() - t0
        results["problems"][name] = res
        a, b, c = res["a"], res["b"], res["c"]
        print(f"\n== {name} ({res['seconds']:.1f} s)")
        errs = ", ".join(f"{e:.3g}" for e in a["errors"])
        ratios = ", ".join(f"{a['errors'][i] / a['errors'][i + 1]:.3f}" for i in range(len(a["errors"]) - 1))
        print(f"(a) η = {a['etas']}: max error [{errs}], log-log slope {a['slope']:.3f}, error ratios [{ratios}]")
        for opt in ("gd", "normalized_gd"):
            angles = ["n/r" if v is None else f"{v:.3g}" for v in b[opt]["angle"]]
            print(f"(b) {opt:>13} angle to flow at ln(n/L) = {b['levels']}: {angles} (reached {b[opt]['reached_accuracy']:.4g})")
        for i, k in enumerate(c["levels"]):
            fl, gd, ng = c["flow"][i], c["gd"][i], c["normalized_gd"][i]
            gd_s = f"{gd['gradient_evaluations']} evals" if gd.get("ok") else gd["note"]
            ratio = f"{ng['gradient_evaluations'] / fl['gradient_evaluations']:.3g}" if fl["gradient_evaluations"] else "n/a"
            gd_ratio = f"{gd['gradient_evaluations'] / fl['gradient_evaluations']:.3g}" if gd.get("ok") and fl["gradient_evaluations"] else "n/a"
            print(f"(c) ln(n/L)={k:>6g}: flow {fl['gradient_evaluations']} evals {fl['wall_time']:.3f}s [{fl['status']}]; "
                  f"GD {gd_s}; normalized GD {ng['gradient_evaluations']} evals {ng['wall_time']:.3f}s; "
                  f"ratios GD/flow {gd_ratio}, NGD/flow {ratio}")
    results["seconds"] = time.perf_counter() - start
    json_path = os.path.join(args.out, "flow_vs_gd.json")
    with open(json_path, "w") as fh:
        json.dump(_clean(results), fh, indent=1)
    png_path = os.path.join(args.out, "flow_vs_gd.png")
    _plot(results, png_path)
    print(f"\nwrote {json_path} and {png_path} in {results['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()
