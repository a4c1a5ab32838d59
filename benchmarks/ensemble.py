"""Ensemble throughput: 32 members in one vmapped solve vs a Python loop of 32 simulate_flow calls.

Small model (two-layer squared ReLU, width 16, 40 Appendix-A points), exponential loss, Tsit5,
rtol 1e-8, t ≤ 100. Both sides are timed after compilation, in the same run. Target (issue 7):
throughput ratio ≥ 8 on 2 CPU cores. Also profiles the vector field alone (one member vs the
vmapped field of all members, in a jitted fori_loop) to show where the per-step time goes.
Writes benchmarks/results/ensemble.json.
"""

import argparse
import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf


def field_profile(models, x, y, reps: int = 1000) -> dict:
    """Microseconds per vector-field evaluation: one member, and all members vmapped."""
    from gradflow.flow import _time_field
    from gradflow.problem import prepare_problem

    with gf.x64():
        probs = [prepare_problem(m, (x, y), "exponential", "float64", False, "benchmark") for m in models]
        p0 = probs[0]
        args = (p0.static, p0.x, p0.y, p0.loss)
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[p.params0 for p in probs])

        def single(p, a):
            return _time_field(None, (p, a), args)

        def batched(p, a):
            return jax.vmap(single)(p, a)

        def per_eval(f, p, a):
            @jax.jit
            def loop(p, a):
                def body(_, c):
                    d = f(*c)
                    return jax.tree_util.tree_map(lambda u, v: u + 1e-12 * v, c, d)

                return jax.lax.fori_loop(0, reps, body, (p, a))

            jax.block_until_ready(loop(p, a))
            best = min(_timed(lambda: jax.block_until_ready(loop(p, a))) for _ in range(5))
            return best / reps * 1e6

        one = per_eval(single, p0.params0, jnp.zeros(2))
        all_ = per_eval(batched, stacked, jnp.zeros((len(models), 2)))
    return {"single_member_us": one, "vmapped_all_members_us": all_, "vmapped_per_member_us": all_ / len(models)}


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
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
    t_vmap = t_loop = float("inf")
    for _ in range(args.repeats):  # best of `repeats`, alternating (the machine is shared)
        start = time.perf_counter()
        ens = gf.simulate_ensemble(models, (x, y), 100.0, **opts)
        t_vmap = min(t_vmap, time.perf_counter() - start)
        start = time.perf_counter()
        loop = [gf.simulate_flow(m, (x, y), 100.0, **opts) for m in models]
        t_loop = min(t_loop, time.perf_counter() - start)
    diff = max(float(np.max(np.abs(a.norm[-1] - b.norm[-1]) / b.norm[-1])) for a, b in zip(ens.members, loop, strict=True))
    out = {
        "members": args.members,
        "width": args.width,
        "repeats": args.repeats,
        "vmapped_seconds": t_vmap,
        "loop_seconds": t_loop,
        "throughput_ratio": t_loop / t_vmap,
        "target": 8.0,
        "max_relative_difference_final_norm": diff,
        "steps_vmapped_max": max(m.stats["steps"] for m in ens.members),
        "rejected_steps_vmapped": ens.members[0].stats["rejected_steps"],
        "steps_loop_total": sum(r.stats["steps"] for r in loop),
        "steps_loop_max_member": max(r.stats["steps"] for r in loop),
        "seconds_per_step_vmapped": t_vmap / ens.members[0].stats["steps"],
        "seconds_per_step_loop": t_loop / sum(r.stats["steps"] for r in loop),
        "vector_field": field_profile(models, x, y),
        "device": str(jax.devices()[0]),
    }
    print(json.dumps(out, indent=2))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ensemble.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
