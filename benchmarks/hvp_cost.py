"""Cost of a Hessian-vector product in gradient evaluations, on the problem of benchmarks/defaults.py.

Two-layer squared-ReLU net (width 1,000, random fixed signs), 100 points of the appendix-A data,
exponential loss, float64. Timed after compiling, each as a jitted ``lax.fori_loop`` of ``--reps``
evaluations (the loop carries its result into the next input, so nothing is hoisted), best of
``--repeats``:

* ``gradient``: ∇ ln L (one reverse pass: what the flow's field costs);
* ``hvp``: ∇²g v by ``jax.jvp`` of ``jax.grad`` (forward-over-reverse, as
  :func:`gradflow.sharpness.loss_hvp` computes it for the power iteration);
* ``linearized_jvp``: one application of the ``jax.linearize`` of the gradient (what Newton–GMRES
  applies per Krylov step: :class:`gradflow.solvers.counting.CountingNewton` linearises once per
  Newton iteration, then GMRES applies the linear map).

The ratios hvp/gradient and linearized_jvp/gradient set ``gradflow.sharpness.HVP_COST`` and
``gradflow.solvers.counting.JVP_COST`` (the cost at which ``stats['gradient_evaluations']`` counts
Newton–GMRES JVPs). Writes benchmarks/results/hvp_cost.json.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import gradflow as gf
from gradflow.params import combine, partition


def _best(fn, arg, repeats):
    jax.block_until_ready(fn(arg))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x, y = gf.datasets.appendix_a_synthetic(n=100, seed=0)
    with gf.x64():
        model = gf.TwoLayerSquaredReLU(3, args.width, key=jax.random.PRNGKey(0), signs="random", init_scale=1.0)
        params, static = partition(model)
        flat0, unravel = ravel_pytree(params)
        xj, yj = jnp.asarray(x, jnp.float64), jnp.asarray(y)
        loss = gf.Exponential()

        def log_loss(f):
            return loss.log_loss(combine(unravel(f), static)(xj), yj)

        grad = jax.grad(log_loss)
        reps = args.reps

        @jax.jit
        def gradients(f):
            return jax.lax.fori_loop(0, reps, lambda _, v: f + 1e-12 * grad(v), f)

        @jax.jit
        def hvps(v):
            return jax.lax.fori_loop(0, reps, lambda _, u: jax.jvp(grad, (flat0,), (u,))[1] * 1e-3 + v, v)

        @jax.jit
        def linearized(v):
            _, lin = jax.linearize(grad, flat0)
            return jax.lax.fori_loop(0, reps, lambda _, u: lin(u) * 1e-3 + v, v)

        @jax.jit
        def linearize_only(f):  # one linearisation (Newton iteration) and one application
            def body(_, v):
                g, lin = jax.linearize(grad, v)
                return f + 1e-12 * (g + lin(g))
            return jax.lax.fori_loop(0, reps, body, f)

        v0 = jnp.ones_like(flat0) / jnp.sqrt(flat0.size)
        t_grad = _best(gradients, flat0, args.repeats) / reps
        t_hvp = _best(hvps, v0, args.repeats) / reps
        t_lin = _best(linearized, v0, args.repeats) / reps
        t_newton = _best(linearize_only, flat0, args.repeats) / reps
    out = {
        "setup": f"TwoLayerSquaredReLU width {args.width}, n=100 (appendix A data), exp loss, float64, "
                 f"{reps} evaluations per timing, best of {args.repeats}",
        "parameters": int(flat0.size),
        "seconds_gradient": t_grad,
        "seconds_hvp": t_hvp,
        "seconds_linearized_jvp": t_lin,
        "seconds_linearize_plus_one_jvp": t_newton,
        "hvp_over_gradient": t_hvp / t_grad,
        "linearized_jvp_over_gradient": t_lin / t_grad,
        "linearize_plus_one_jvp_over_gradient": t_newton / t_grad,
        "device": str(jax.devices()[0]),
    }
    print(json.dumps(out, indent=2))
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "hvp_cost.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
