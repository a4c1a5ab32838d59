"""A CNN's gradient inside a compiled loop, with and without :func:`gradflow.conv_layout.canonical_convs`.

XLA's CPU compiler puts a convolution on Eigen's fast kernels only in the canonical order (NHWC
input, HWIO kernel), and its pass that rewrites the others visits the module's entry computation
only: inside a ``while`` body (every stage of a diffrax solve) an Equinox convolution (NCHW) and the
convolutions of its gradient run on XLA's generic emitter. This script measures, for the two
networks of the quick Figure 2 on 100 digits (cross-entropy), in this one process:

* ``jitted_us``: a jitted ``jax.grad`` of the mean loss, called on its own (the "bare gradient"
  the other benchmarks divide by; XLA canonicalizes its convolutions);
* ``loop_us``: the same gradient as the body of a ``fori_loop`` of ``N`` gradient steps, per step;
* ``loop_canonical_us``: the same loop with the gradient wrapped in ``canonical_convs``;

each the least of ``ROUNDS`` interleaved rounds (this machine's speed drifts between minutes), and
the ratios to ``jitted_us``; ``max_abs_difference``: between the two loops' final parameters
(the rewrite only reorders the arrays: 0 when Eigen sums in the same order). Also the convolutions'
orders (``dim_labels``) in the compiled loops. Writes ``benchmarks/results/conv_layout.json``
(~2 minutes on 2 cores).

    python benchmarks/conv_layout.py
"""

from __future__ import annotations

import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow.conv_layout import canonical_convs
from gradflow.figures import load_image_data, make_margin_model
from gradflow.params import combine
from gradflow.problem import prepare_problem

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "conv_layout.json")
ARCHS = ("hcnn", "densenet")
N = 100
ROUNDS = 8


def measure(arch: str) -> dict:
    x, y = load_image_data("digits", n=100, seed=0)
    model = make_margin_model(arch, x.shape[1:], 10, seed=0)
    with gf.x64():
        prob = prepare_problem(model, (x, y), "cross_entropy", "float64", False, "benchmark")
        xs, ys, loss, static, n = prob.x, prob.y, prob.loss, prob.static, prob.n

        def grad(p, xs, ys):
            return jax.grad(lambda q: jnp.exp(loss.log_loss(combine(q, static)(xs), ys)) / n)(p)

        def loop(g):
            return jax.jit(lambda p, xs, ys: jax.lax.fori_loop(
                0, N, lambda i, q: jax.tree_util.tree_map(lambda a, b: a - 1e-3 * b, q, g(q, xs, ys)), p))

        fns = {"jitted": jax.jit(grad), "loop": loop(grad), "loop_canonical": loop(canonical_convs(grad))}
        p = prob.params0
        labels = {k: sorted(set(re.findall(r"dim_labels=([\w>-]+)", f.lower(p, xs, ys).compile().as_text())))
                  for k, f in fns.items()}
        finals = {k: jax.block_until_ready(fns[k](p, xs, ys)) for k in ("loop", "loop_canonical")}
        jax.block_until_ready(fns["jitted"](p, xs, ys))
        best = dict.fromkeys(fns, float("inf"))
        for _ in range(ROUNDS):
            for k, f in fns.items():
                reps = 20 if k == "jitted" else 1
                for _ in range(reps):
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(p, xs, ys))
                    per = (time.perf_counter() - t0) / (1 if k == "jitted" else N)
                    best[k] = min(best[k], per)
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(finals["loop"]),
                                                                jax.tree_util.tree_leaves(finals["loop_canonical"]),
                                                                strict=True))
    us = {f"{k}_us": v * 1e6 for k, v in best.items()}
    return {**us, "loop_over_jitted": best["loop"] / best["jitted"],
            "loop_canonical_over_jitted": best["loop_canonical"] / best["jitted"],
            "loop_over_loop_canonical": best["loop"] / best["loop_canonical"],
            "max_abs_difference": diff, "dim_labels": labels, "params": int(sum(np.size(a) for a in jax.tree_util.tree_leaves(p)))}


def main() -> None:
    results = {"setup": f"100 digits, cross-entropy, float64; a fori_loop of {N} gradient steps; least of {ROUNDS} "
                        "interleaved rounds", "machine": dict(cpus=os.cpu_count(), jax=jax.__version__,
                                                              gradflow=gf.__version__)}
    results["networks"] = {}
    for arch in ARCHS:
        results["networks"][arch] = r = measure(arch)
        print(f"{arch}: jitted {r['jitted_us']:.0f} us, in a loop {r['loop_us']:.0f} us ({r['loop_over_jitted']:.2f}x), "
              f"canonical in a loop {r['loop_canonical_us']:.0f} us ({r['loop_canonical_over_jitted']:.2f}x); "
              f"max |diff| {r['max_abs_difference']:.1e}; {r['dim_labels']}", flush=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
