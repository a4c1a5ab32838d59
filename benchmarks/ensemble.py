"""Ensemble throughput: 32 members in one vmapped solve vs a Python loop of 32 simulate_flow calls.

Small model (two-layer squared ReLU, width 16, 40 Appendix-A points), exponential loss, Tsit5,
rtol 1e-8, t ≤ 100. Both sides are timed after compilation, in the same run. Target (issue 7):
throughput ratio ≥ 8 on 2 CPU cores. Writes benchmarks/results/ensemble.json.
"""

import argparse
import json
import os
import time
import warnings

import jax
import numpy as np

import gradflow as gf


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # Assumption 2.3 warnings at a random start
    x, y = gf.datasets.appendix_a_synthetic(n=40, seed=0)
    models = [
        gf.TwoLayerSquaredReLU(3, args.width, key=jax.random.PRNGKey(i), signs="alternating", init_scale=0.5)
        for i in range(args.members)
    ]
    opts = dict(num_save=20, rtol=1e-8, atol=1e-10, check_degree=False)
    gf.simulate_ensemble(models, (x, y), 100.0, **opts)  # compile
    gf.simulate_flow(models[0], (x, y), 100.0, **opts)  # compile
    start = time.perf_counter()
    ens = gf.simulate_ensemble(models, (x, y), 100.0, **opts)
    t_vmap = time.perf_counter() - start
    start = time.perf_counter()
    loop = [gf.simulate_flow(m, (x, y), 100.0, **opts) for m in models]
    t_loop = time.perf_counter() - start
    diff = max(float(np.max(np.abs(a.norm[-1] - b.norm[-1]) / b.norm[-1])) for a, b in zip(ens.members, loop, strict=True))
    out = {
        "members": args.members,
        "width": args.width,
        "vmapped_seconds": t_vmap,
        "loop_seconds": t_loop,
        "throughput_ratio": t_loop / t_vmap,
        "target": 8.0,
        "max_relative_difference_final_norm": diff,
        "steps_vmapped_max": max(m.stats["steps"] for m in ens.members),
        "steps_loop_total": sum(r.stats["steps"] for r in loop),
        "device": str(jax.devices()[0]),
    }
    print(json.dumps(out, indent=2))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ensemble.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
