"""The user's first call against raw diffrax and torchdiffeq (issue 19): wall time of the defaults.

Problem (issue 19): two-layer squared-ReLU net (width 1,000, fixed random signs, trained first
layer) on 100 points in R³ (appendix-A data: 2-D + a constant feature), exponential loss, the
gradient flow dW/dt = −∇L for t ≤ 1e4, rtol 1e-6, atol 1e-9, 100 save points (gradflow's default
ones, geometric in t, passed to the others too). Rows, all in this one process, each timed after
a first (compiling) call, best of ``--repeats`` (5):

The rows are timed interleaved (each of the 5 rounds runs every row once), in wall time and in
CPU time of this process (``time.process_time``). On a shared machine the CPU time is the
steadier of the two: other processes' load lengthens the wall time of whichever row it hits.

* ``raw_diffrax_tsit5``: ``diffrax.diffeqsolve`` of dW/dt = −∇L with Tsit5 and a PID controller
  at the same tolerances, jitted, saving ln L at the save points (the least a user would save);
* ``gradflow_defaults``: ``simulate_flow(model, data, 1e4, rtol=1e-6, atol=1e-9)`` with every
  other option at its default (diagnostics, sharpness budget, kink rule), wall time of the call;
* ``gradflow_sharpness_exact``: the same with ``sharpness=True`` (converged at every save point);
* ``gradflow_no_sharpness``: the same with ``sharpness=False``;
* ``gradflow_no_sharpness_save_params``: and ``save_params=True`` (W kept at every save point:
  what ``sharpness=True`` keeps for its scan, and why the default keeps fewer);
* ``torchdiffeq_dopri5``: ``torchdiffeq.odeint`` (dopri5, float64, CPU) of the same field with
  the gradient by torch autograd, at the same tolerances and save points; skipped (with a note)
  when torch or torchdiffeq is not installed (``pip install -e .[bench]``). Its first step is
  given (1e-8): its own initial-step rule returns 0 on this problem.

Also recorded: steps and gradient evaluations of each, the sharpness HVPs and how many save points
were evaluated, the wall time of the sharpness per evaluated point in gradient evaluations, timed apart
from the solve (``sharpness_cost_per_point``, :func:`sharpness_point_cost`: the
gradflow.sharpness.POINT_COST the budget plans with), and the default's sharpness at those points against ``sharpness=True``
(max relative difference). Writes benchmarks/results/defaults.json.
"""

import argparse
import json
import os
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow.params import combine, partition

T_MAX = 1e4
TOL = dict(rtol=1e-6, atol=1e-9)
FIRST_STEP = 1e-8  # torchdiffeq only (see torchdiffeq_row)


def _interleaved(calls: dict, repeats):
    """Best wall time and best CPU time (``time.process_time``: this process's threads only) of
    each call over ``repeats`` rounds; every round runs every call once (so a slow spell of a
    shared machine hits all rows alike). Each call is made once first (compile). Returns
    ({name: (wall, cpu)}, {name: last output})."""
    outs = {name: fn() for name, fn in calls.items()}
    best = {name: (float("inf"), float("inf")) for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            outs[name] = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best, outs


def raw_diffrax(model, x, y, ts):
    """A jitted diffrax Tsit5 solve of dW/dt = −∇L; returns a function () → (ln L at ts, steps)."""
    params, static = partition(model)
    xj, yj = jnp.asarray(x, jnp.float64), jnp.asarray(y)
    loss = gf.Exponential()

    def log_loss(p):
        return loss.log_loss(combine(p, static)(xj), yj)

    def field(t, p, args):
        g = jax.grad(lambda q: jnp.exp(log_loss(q)))(p)
        return jax.tree_util.tree_map(jnp.negative, g)

    @jax.jit
    def run(p):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, T_MAX, None, p,
                                  saveat=diffrax.SaveAt(ts=jnp.asarray(ts), fn=lambda t, q, a: log_loss(q)),
                                  stepsize_controller=diffrax.PIDController(**TOL), max_steps=100_000)
        return sol.ys, sol.stats["num_steps"]

    def call():
        out = run(params)
        jax.block_until_ready(out)
        return out

    return call


def sharpness_point_cost(model, x, y, repeats):
    """The wall time of the sharpness at one save point in gradient evaluations (what
    ``gradflow.sharpness.POINT_COST`` plans with), timed apart from the solve: a jitted
    ``lax.scan`` of warm-started power iterations (tol 1e-3, as in the solve) over W at the flow's
    save points, every point and every 11th (the spacing of a 9-point budget), against a jitted
    loop of gradients of ln L; best of ``repeats``. Returns (per point at every point, per point at
    every 11th, HVPs per point at each)."""
    from jax.flatten_util import ravel_pytree

    from gradflow.sharpness import initial_vector, sharpness

    r = gf.simulate_flow(model, (x, y), T_MAX, **TOL, diagnostics=gf.Diagnostics(sharpness=False), save_params=True)
    params, static = partition(model)
    unravel = ravel_pytree(params)[1]
    xj, yj = jnp.asarray(x, jnp.float64), jnp.asarray(y)
    loss = gf.Exponential()
    flats = jnp.asarray(r.params_flat)

    @jax.jit
    def along(points):
        def step(v, w):
            sh = sharpness(unravel(w), static, xj, yj, loss, v, tol=1e-3, max_iters=100)
            return sh.vector, sh.hvps
        return jax.lax.scan(step, initial_vector(flats.shape[1]), points)[1]

    def log_loss(f):
        return loss.log_loss(combine(unravel(f), static)(xj), yj)

    reps = 400

    @jax.jit
    def gradients(f):
        return jax.lax.fori_loop(0, reps, lambda _, v: f + 1e-12 * jax.grad(log_loss)(v), f)

    out = []
    for points in (flats, flats[::11]):
        wall, hvps = _interleaved({"s": lambda points=points: jax.block_until_ready(along(points))}, repeats)
        out.append((wall["s"][1] / len(points), float(np.mean(hvps["s"]))))
    grad_wall, _ = _interleaved({"g": lambda: jax.block_until_ready(gradients(flats[0]))}, repeats)
    per_gradient = grad_wall["g"][1] / reps
    return {"every_point": out[0][0] / per_gradient, "every_11th_point": out[1][0] / per_gradient,
            "hvps_per_point_every_point": out[0][1], "hvps_per_point_every_11th": out[1][1],
            "seconds_per_gradient": per_gradient}


def torchdiffeq_call(model, x, y, ts):
    """() → torchdiffeq's dopri5 solution and its field evaluations, or a note why it is skipped.
    Torch's intra-op threads: the faster of 1 and 2 per field evaluation (timed here; on a shared
    2-core machine its 2-thread pool can be several times slower)."""
    try:
        import torch
        import torchdiffeq
    except ImportError as err:
        return None, {"skipped": f"torch/torchdiffeq not installed ({err.name}); pip install -e .[bench]"}
    w0 = torch.tensor(np.asarray(model.w), dtype=torch.float64)
    a = torch.tensor(np.asarray(model.signs), dtype=torch.float64)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    calls = [0]

    def field(t, w):
        calls[0] += 1
        with torch.enable_grad():
            w = w.detach().requires_grad_(True)
            out = (torch.relu(xt @ w.T) ** 2) @ a  # Φ(x) = Σ_j a_j relu(⟨w_j, x⟩)²
            loss = torch.exp(-yt * out).sum()
            (g,) = torch.autograd.grad(loss, w)
        return -g

    per_eval = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        field(0.0, w0)
        start = time.perf_counter()
        for _ in range(200):
            field(0.0, w0)
        per_eval[threads] = (time.perf_counter() - start) / 200
    threads = min(per_eval, key=per_eval.get)
    torch.set_num_threads(threads)
    tt = torch.tensor(ts, dtype=torch.float64)

    def call():
        calls[0] = 0
        # torchdiffeq's initial-step rule returns dt = 0 here (its trial Euler step overflows exp:
        # L(W₀) = e^13.6, ‖∇L‖ ≈ 1.9e7), so the first step is given; the controller grows it ×10 a step
        torchdiffeq.odeint(field, w0, tt, method="dopri5", options={"first_step": FIRST_STEP}, **TOL)
        return calls[0]

    info = {"first_step": FIRST_STEP, "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
            "threads": threads, "seconds_per_field_evaluation": {str(k): v for k, v in per_eval.items()}}
    return call, info


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x, y = gf.datasets.appendix_a_synthetic(n=100, seed=0)
    model = gf.TwoLayerSquaredReLU(3, args.width, key=jax.random.PRNGKey(0), signs="random", init_scale=1.0)
    rows = {}
    with gf.x64():
        first = gf.simulate_flow(model, (x, y), T_MAX, **TOL, diagnostics=gf.Diagnostics(sharpness=False))
        ts = np.clip(np.asarray(first.diagnostics["t"]), 0.0, T_MAX)  # the default save points
        variants = {"gradflow_defaults": {}, "gradflow_sharpness_exact": {"sharpness": True},
                    "gradflow_no_sharpness": {"sharpness": False},
                    "gradflow_no_sharpness_save_params": {"sharpness": False, "save_params": True}}
        calls = {"raw_diffrax_tsit5": raw_diffrax(model, x, y, ts)}
        calls.update({name: (lambda extra=extra: gf.simulate_flow(model, (x, y), T_MAX, **TOL, **extra))
                      for name, extra in variants.items()})
        torch_call, torch_info = torchdiffeq_call(model, x, y, ts)
        if torch_call is not None:
            calls["torchdiffeq_dopri5"] = torch_call
        best, outs = _interleaved(calls, args.repeats)
    log_loss, steps = outs["raw_diffrax_tsit5"]
    rows["raw_diffrax_tsit5"] = {"wall": best["raw_diffrax_tsit5"][0], "cpu": best["raw_diffrax_tsit5"][1], "steps": int(steps),
                                 "gradient_evaluations": 6 * int(steps) + 3, "final_log_loss": float(log_loss[-1])}
    for name in variants:
        r = outs[name]
        rows[name] = {"wall": best[name][0], "cpu": best[name][1], "solver": r.config.get("solver"), "steps": r.stats["steps"],
                      "gradient_evaluations": r.stats["gradient_evaluations"],
                      "sharpness_hvps": r.stats.get("sharpness_hvps", 0),
                      "final_log_loss": float(r.diagnostics["log_loss"][-1])}
    d, e = outs["gradflow_defaults"].diagnostics, outs["gradflow_sharpness_exact"].diagnostics
    taken = np.isfinite(d["sharpness"])
    rows["gradflow_defaults"]["sharpness_points"] = int(taken.sum())
    rows["gradflow_defaults"]["sharpness_max_rel_diff_vs_exact"] = float(
        np.max(np.abs(d["sharpness"][taken] / e["sharpness"][taken] - 1.0)))
    rows["gradflow_sharpness_exact"]["sharpness_points"] = int(np.isfinite(e["sharpness"]).sum())
    if torch_call is None:
        rows["torchdiffeq_dopri5"] = torch_info
    else:
        rows["torchdiffeq_dopri5"] = {"wall": best["torchdiffeq_dopri5"][0], "cpu": best["torchdiffeq_dopri5"][1],
                                      "gradient_evaluations": outs["torchdiffeq_dopri5"],
                                      **torch_info}
    raw = rows["raw_diffrax_tsit5"]
    for row in rows.values():
        if "wall" in row:
            row["vs_raw_diffrax"] = row["wall"] / raw["wall"]
            row["cpu_vs_raw_diffrax"] = row["cpu"] / raw["cpu"]
    out = {"setup": f"TwoLayerSquaredReLU width {args.width} (random signs), n=100 appendix-A points, exp loss, "
                    f"t<=1e4, rtol 1e-6, atol 1e-9, {len(ts)} save points, best of {args.repeats}",
           "rows": rows, "target_defaults_vs_raw": 1.05, "device": str(jax.devices()[0])}
    with gf.x64():
        out["sharpness_cost_per_point"] = sharpness_point_cost(model, x, y, args.repeats)
    if "wall" in rows["torchdiffeq_dopri5"]:
        out["torchdiffeq_over_defaults"] = rows["torchdiffeq_dopri5"]["wall"] / rows["gradflow_defaults"]["wall"]
        out["torchdiffeq_over_defaults_cpu"] = rows["torchdiffeq_dopri5"]["cpu"] / rows["gradflow_defaults"]["cpu"]
    print(json.dumps(out, indent=2))
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "defaults.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
