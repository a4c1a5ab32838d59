"""Solver overhead: wall time per gradient evaluation inside simulate_flow vs a bare jitted loop.

Setup (issue 2): two-layer squared-ReLU net, width 1,000, on 100 synthetic 2-D points (+ a constant
feature), exponential loss, Tsit5 at rtol 1e-6, t ≤ 1e4. Both sides are measured in this run, after
compilation; the ratio is (flow wall / flow gradient evaluations) / (bare wall / bare evaluations).
Gradient evaluations of the flow = Tsit5's 6 per attempted step + 2 at the start + 1 per save point
(diagnostics). Target: ratio ≤ 1.2. Writes benchmarks/results/overhead.json.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp

import gradflow as gf
from gradflow.params import combine, partition


def synthetic(n=100, seed=0):
    """Appendix A data (gradflow.datasets.appendix_a_synthetic)."""
    return gf.datasets.appendix_a_synthetic(n=n, seed=seed)


def bare_loop(model, x, y, evaluations: int, loss=None) -> float:
    """Seconds per gradient of ln L for a jitted lax.fori_loop of tiny GD steps (no solver at all).

    ``loss``: a gradflow Loss (default exponential). Shared with benchmarks/gpu.py."""
    with gf.x64():
        params, static = partition(model)
        loss = gf.Exponential() if loss is None else loss
        xj, yj = jnp.asarray(x, jnp.float64), jnp.asarray(y)

        def log_loss(p):
            return loss.log_loss(combine(p, static)(xj), yj)

        @jax.jit
        def run(p):
            def body(_, p):
                g = jax.grad(log_loss)(p)
                return jax.tree_util.tree_map(lambda a, b: a - 1e-9 * b, p, g)

            return jax.lax.fori_loop(0, evaluations, body, p)

        jax.block_until_ready(run(params))
        start = time.perf_counter()
        jax.block_until_ready(run(params))
        return (time.perf_counter() - start) / evaluations


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    x, y = synthetic()
    model = gf.TwoLayerSquaredReLU(3, args.width, key=jax.random.PRNGKey(0), signs="random", init_scale=1.0)
    opts = dict(rtol=1e-6, atol=1e-9, num_save=50, check_degree=False)
    gf.simulate_flow(model, (x, y), 1e4, **opts)  # compile
    flow_per_grad = []
    for _ in range(args.repeats):
        r = gf.simulate_flow(model, (x, y), 1e4, **opts)
        evals = r.stats["gradient_evaluations"] + r.stats["diagnostic_evaluations"]
        flow_per_grad.append(r.stats["wall_time"] / evals)
    bare = [bare_loop(model, x, y, evals) for _ in range(args.repeats)]
    ratio = min(flow_per_grad) / min(bare)
    out = {
        "setup": f"TwoLayerSquaredReLU width {args.width}, n=100, exp loss, tsit5 rtol 1e-6, t<=1e4",
        "flow_steps": r.stats["steps"],
        "flow_gradient_evaluations": evals,
        "flow_seconds_per_gradient": min(flow_per_grad),
        "bare_seconds_per_gradient": min(bare),
        "ratio": ratio,
        "target": 1.2,
        "device": str(jax.devices()[0]),
    }
    print(json.dumps(out, indent=2))
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "overhead.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
