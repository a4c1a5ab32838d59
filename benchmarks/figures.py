"""Figures 2 and 3 from the random initialisation: the wall time of the quick size and its checks.

The figures cross the transient with normalized GD by default (``warmup=True``) until the flow's own
transient fits the quick size; this measures the flow from the random initialisation
(``warmup=False``, through the sliding solver) against that target: quick ``figure2`` within
2 minutes on 2 cores. Runs ``gradflow.figures.figure2("quick", warmup=False)`` (and ``figure3`` with
``--figure3``) in a fresh process (its wall time includes the compiles, as a user's first call
does) and writes benchmarks/results/figures.json: wall time, per-architecture timings, statuses and
the margin checks of :func:`gradflow.figures.margin_checks`.

``--rtol`` (``figure2_quick_rtol``): would a looser tolerance bring the quick Figure 2 from the
initialisation under 2 minutes, and at what accuracy? The H-AlexNet's quick run at rtol 1e-4, 1e-3,
the quick size's 1e-5 and 1e-6 (the reference: ~10 minutes), and the DenseNet's at 1e-4, each
with its wall time (``compiled``: the first run of each network, whose wall includes the compile,
as a user's first call) and status; against the reference, the
distance of the final W/‖W‖ and the largest difference of the normalized margins (as the figure
plots them) over the save points where both runs classify every example, and at the last one.

    python benchmarks/figures.py [--figure3] [--rtol]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

import numpy as np

import gradflow as gf

RESULTS = os.path.join(os.path.dirname(__file__), "results", "figures.json")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def run(number: int) -> dict:
    fn = gf.figures.figure2 if number == 2 else gf.figures.figure3
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        start = time.perf_counter()
        res = fn("quick", out=out, progress=False, warmup=False)
        wall = time.perf_counter() - start
    results = res["results"]
    return dict(wall_s=wall, target_s=120.0, target_met=wall <= 120.0, timings=_plain(res["timings"]),
                checks=_plain(res["checks"]),
                statuses={arch: r.status for arch, r in results.items()},
                reasons={arch: r.reason for arch, r in results.items()},
                final_accuracy={arch: float(r.accuracy[-1]) for arch, r in results.items()},
                steps={arch: int(r.stats["steps"]) for arch, r in results.items()},
                gradient_evaluations={arch: r.stats.get("gradient_evaluations") for arch, r in results.items()},
                warmup=False)


def _direction(r) -> np.ndarray:
    """The final W/‖W‖ of a run (``result.params``, its trainable leaves, flattened)."""
    flat = np.concatenate([np.ravel(a) for a in r.params.values()])
    return flat / np.linalg.norm(flat)


def run_rtol(rtols=(1e-4, 1e-3, 1e-5, 1e-6), densenet_rtols=(1e-4,)) -> dict:
    """The quick Figure 2's flows from the initialisation at other tolerances (see the module docstring)."""
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for arch, tols in (("hcnn", rtols), ("densenet", densenet_rtols)):
            for rtol in tols:
                start = time.perf_counter()
                r = gf.figures.margin_run(arch, "quick", warmup=False, progress=False, rtol=rtol)
                wall = time.perf_counter() - start
                row = dict(arch=arch, rtol=rtol, wall_s=wall, compiled=rtol == tols[0], status=r.status, reason=r.reason,
                           steps=int(r.stats["steps"]), gradient_evaluations=r.stats["gradient_evaluations"],
                           final_accuracy=float(r.accuracy[-1]))
                print(json.dumps(row), flush=True)
                runs[(arch, rtol)] = (r, row)
    ref, _ = runs[("hcnn", min(rtols))]
    q_ref, u_ref, err_ref = gf.figures.normalize_by_median(ref.raw_margins), _direction(ref), np.asarray(ref.train_error)
    for (arch, rtol), (r, row) in runs.items():
        if arch != "hcnn" or rtol == min(rtols):
            continue
        q = gf.figures.normalize_by_median(r.raw_margins)
        k = min(len(q), len(q_ref))
        both = (np.asarray(r.train_error)[:k] == 0) & (err_ref[:k] == 0)
        diff = np.max(np.abs(q[:k] - q_ref[:k]), axis=1)
        row.update(reference_rtol=min(rtols), final_direction_distance=float(np.linalg.norm(_direction(r) - u_ref)),
                   margins_max_difference=float(np.max(diff[both])), margins_last_difference=float(diff[k - 1]),
                   accuracy_grid_max_difference=float(np.max(np.abs(np.asarray(r.accuracy)[:k] - np.asarray(ref.accuracy)[:k]))))
    return {"runs": [row for _, row in runs.values()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--figure3", action="store_true", help="also the quick Figure 3")
    ap.add_argument("--rtol", action="store_true", help="only the quick Figure 2's flows at other tolerances")
    args = ap.parse_args()
    out = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    if args.rtol:
        out["figure2_quick_rtol"] = run_rtol()
        print(json.dumps(out["figure2_quick_rtol"], indent=1), flush=True)
    else:
        out["figure2_quick"] = run(2)
        print(json.dumps(out["figure2_quick"], indent=1), flush=True)
    if args.figure3:
        out["figure3_quick"] = run(3)
    out["machine"] = dict(cpus=os.cpu_count(), gradflow=gf.__version__)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", RESULTS)


if __name__ == "__main__":
    main()
