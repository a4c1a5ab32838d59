"""Figures 2 and 3 from the random initialisation: the wall time of the quick size and its checks.

The figures cross the transient with normalized GD by default (``warmup=True``) until the flow's own
transient fits the quick size; this measures the flow from the random initialisation
(``warmup=False``, through the sliding solver) against that target: quick ``figure2`` within
2 minutes on 2 cores. Runs ``gradflow.figures.figure2("quick", warmup=False)`` (and ``figure3`` with
``--figure3``) in a fresh process (its wall time includes the compiles, as a user's first call
does) and writes benchmarks/results/figures.json: wall time, per-architecture timings, statuses and
the margin checks of :func:`gradflow.figures.margin_checks`.

    python benchmarks/figures.py [--figure3]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--figure3", action="store_true", help="also the quick Figure 3")
    args = ap.parse_args()
    out = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
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
