"""Activation-pattern diagnostics and error_check on the hcnn transient (issue 12, parts 3 and 4).

Setup: the ``hcnn`` of ``gradflow.figures.make_margin_model`` (1,252 parameters) on n digits,
cross-entropy, from its random initialization to t = ``--t`` (physical time), Tsit5 at rtol 1e-5,
atol 1e-8, 30 save points. Measured in this run, side by side:

* the wall time of the same solve with ``Diagnostics(activation_patterns=...)`` on and off (after compilation,
  timed alternately three times each, the minimum kept; the steps are identical), and their ratio;
* the activation flips, max-pool switches and near-zero share along the run;
* ``Diagnostics(error_check=True)``: the difference of W/‖W‖ and of the normalized margins from the run at
  rtol/10, at the last save point, and the cost of the second run.

Writes benchmarks/results/activation_patterns.json and a plot_flow PNG next to it.
"""

import argparse
import json
import os
import time

import numpy as np

import gradflow as gf


def timed_pair(fa, fb, repeats: int = 3):
    """Both compiled first, then timed alternately ``repeats`` times; the results and min walls."""
    ra, rb = fa(), fb()
    walls_a, walls_b = [], []
    for _ in range(repeats):
        for fn, walls in ((fa, walls_a), (fb, walls_b)):
            start = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - start)
    return ra, rb, min(walls_a), min(walls_b)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--t", type=float, default=0.01)
    args = parser.parse_args()
    x, y = gf.datasets.digits(args.n)
    model = gf.figures.make_margin_model("hcnn", x.shape[1:])
    opts = dict(t_max=args.t, loss="cross_entropy", rtol=1e-5, atol=1e-8, num_save=30, max_steps=200_000)
    on, off, wall_on, wall_off = timed_pair(lambda: gf.simulate_flow(model, (x, y), **opts),
                                            lambda: gf.simulate_flow(model, (x, y), diagnostics=gf.Diagnostics(activation_patterns=False),
                                                                      **opts))
    assert on.stats["steps"] == off.stats["steps"]
    start = time.perf_counter()
    checked = gf.simulate_flow(model, (x, y), diagnostics=gf.Diagnostics(error_check=True), **opts)  # with its compile
    wall_check = time.perf_counter() - start
    d = checked.diagnostics
    out = {
        "setup": dict(arch="hcnn", n=args.n, t=args.t, **{k: opts[k] for k in ("rtol", "atol", "num_save")}),
        "steps": on.stats["steps"], "gradient_evaluations": on.stats["gradient_evaluations"],
        "wall_patterns_on_s": wall_on, "wall_patterns_off_s": wall_off, "patterns_overhead_ratio": wall_on / wall_off,
        "activation_units": on.config["activation_units"], "pool_windows": on.config["pool_windows"],
        "t": on.t.tolist(), "accuracy": on.accuracy.tolist(),
        "activation_flips": on.activation_flips.tolist(), "pool_switches": on.pool_switches.tolist(),
        "near_zero_share": on.near_zero_share.tolist(),
        "error_direction": d["error_direction"].tolist(), "error_margins": d["error_margins"].tolist(),
        "error_check_final_direction": float(d["error_direction"][-1]),
        "error_check_final_margins": float(d["error_margins"][-1]),
        "error_check_steps_tight": checked.stats["error_check"]["steps"],
        "error_check_wall_s_incl_compile": wall_check,
        "versions": on.config["versions"],
    }
    print(f"hcnn n={args.n} to t={args.t}: {out['steps']} steps, {out['gradient_evaluations']} gradient evaluations")
    print(f"patterns on {wall_on:.2f} s, off {wall_off:.2f} s: ratio {out['patterns_overhead_ratio']:.3f}")
    print(f"flips {int(on.activation_flips.sum())} of {out['activation_units']} units, pool switches "
          f"{int(on.pool_switches.sum())} of {out['pool_windows']} windows; near-zero share "
          f"{on.near_zero_share[0]:.3g} → {on.near_zero_share[-1]:.3g}")
    print(f"error_check at t={args.t}: ‖ΔŴ‖ = {out['error_check_final_direction']:.3g}, "
          f"max|Δ margin| = {out['error_check_final_margins']:.3g}; tight run {out['error_check_steps_tight']} steps")
    here = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(here, exist_ok=True)
    with open(os.path.join(here, "activation_patterns.json"), "w") as f:
        json.dump(out, f, indent=1)
    gf.plot_flow(checked, os.path.join(here, "activation_patterns.png"), title=f"hcnn, {args.n} digits, to t = {args.t}")
    print(np.c_[on.t, on.activation_flips, on.pool_switches, on.near_zero_share, d["error_direction"]])


if __name__ == "__main__":
    main()
