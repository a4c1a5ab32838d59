r"""ReLU flows from random starts through sliding modes (issue 18): do they reach the late phase, at what cost.

The paper's flow is the inclusion dW/dt ∈ −∂L(W) (eq. 2.2). Where the one-sided fields of a kink
surface z_s(W) = 0 both point at it, its solution slides along the surface; an ODE solver on −∇L
chatters across it instead. gradflow's default (``sliding=None``: on for models with a C⁰ ``max``)
integrates the sliding field (gradflow.sliding). Parts:

* ``wine``: a two-layer bias-free ReLU net (8 units) on wine (class 2 against the rest; 178 × 14
  standardized features with a bias unit), exponential loss, the default solver, max_steps 20,000;
  ``--seeds`` random starts × init scales 0.05 and 1.0; to t = 1e4 (time clock) and to
  ln(n/L) = 100 (accuracy clock, ``solver="auto"``). Also the same starts with ``sliding=False``
  to t = 1e4 for the first 3 draws per scale (the behaviour before sliding).
* ``reference``: one start (seed 1) to t = 20 against an independent reference: scipy's Radau on
  the flow with every relu replaced by ε·softplus(z/ε), extrapolated linearly to ε → 0 from
  ε = 1e-6 and 1e-7 (its uncertainty: the extrapolations from (1e-5, 1e-6) and (1e-6, 1e-7) differ by
  ``reference_uncertainty``; ``error_vs_eps``: the distance to each smoothed flow). The default at
  rtol 1e-8 and 1e-10, and with ``step_control="pid"`` (Bosh3 with diffrax's controller, which keeps
  only steps of error ≤ 1 where the kink controller keeps ≤ 10) at rtol 1e-8. ``stationary``: the
  one start of the wine part that stops short of ln(n/L) = 100, against the smoothed flow to t = 1000.
  The errors are max |W − W_ref| at each time; at t = 0.2 no pair slides yet, so only the
  transversal crossings' step control matters there.
* ``cnn``: ``hcnn`` (gradflow.figures.make_margin_model, 1,252 parameters) on 100 digits,
  cross-entropy, the transient to ln(n/L) = ln n + 1 at rtol 1e-5: gradient evaluations of the
  default, of the default before sliding (``sliding=False``: Bosh3 + kink control), and of Tsit5 +
  diffrax's PID; and the relative error of W of each at t = 0.05 against the default at rtol 1e-7
  (``reference_self_error``: its distance to the same at rtol 1e-6).
* ``mlp``: a deep Equinox MLP (``eqx.nn.MLP``, depth 3, width 8, bias-free ReLU) on wine class 1
  against the rest, logistic loss, at rtol 1e-10 in four representations (gradflow's ``ReLUMLP``,
  the Equinox module, a plain function, a Flax NNX module) to t = ``MLP_FOUR_WAY_T``: status,
  steps, and the largest difference of their final parameters; then the Equinox module alone to
  t = 20 at ``MLP_T20_RTOLS``.
* ``cost``: the wall time of a sliding step against a bare gradient, the transient against Tsit5 +
  PID, and the churn of the sliding set (:func:`part_cost`).
* ``approach``: what the approach rule of the entries costs and buys (:func:`part_approach`).

    python benchmarks/sliding.py                 # everything (~75 min on 2 cores)
    python benchmarks/sliding.py --only wine --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from gradflow.figures import make_margin_model
from gradflow.params import combine, partition
from gradflow.progress import initial_accuracy
from gradflow.reference import smoothed_flow
from gradflow.sliding import APPROACH

NO_SHARPNESS = gf.Diagnostics(sharpness=False)
# the four representations are compared to this time, at rtol 1e-10 (most of their ~40,000 steps are
# taken before t = 2)
MLP_FOUR_WAY_T = 20.0
MLP_T20_RTOLS = (1e-8,)  # the Equinox module alone to t = 20 (at rtol 1e-10: the four-way runs)
# the ε of the softplus-smoothed reference flows: ε → 0 extrapolated from the two smallest, its
# uncertainty from the two largest
REFERENCE_EPS = (1e-5, 1e-6, 1e-7)
RESULTS = os.path.join(os.path.dirname(__file__), "results", "sliding.json")


def _row(r, wall: float) -> dict:
    return dict(status=r.status, steps=int(r.stats["steps"]), rejected=int(r.stats["rejected_steps"]),
                gradient_evaluations=r.stats["gradient_evaluations"], t=float(r.t[-1]), accuracy=float(r.accuracy[-1]),
                entries=r.stats.get("sliding_entries"), exits=r.stats.get("sliding_exits"),
                final_pairs=int(r.diagnostics["sliding_pairs"][-1]) if "sliding_pairs" in r.diagnostics else None,
                max_drift=float(np.max(r.diagnostics["sliding_drift"])) if "sliding_drift" in r.diagnostics else None,
                max_chain_rule_residual=(float(np.nanmax(r.diagnostics["chain_rule_residual"]))
                                         if "chain_rule_residual" in r.diagnostics else None),
                wall_s=round(wall, 2), **({} if r.status == "completed" else {"reason": r.reason}))


def _timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


def _write(part: str, value: dict) -> None:
    """Merge ``value`` under ``part`` into the results file (after every run: long parts keep their work)."""
    results = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
    results[part] = value
    results["machine"] = dict(cpus=os.cpu_count(), jax=jax.__version__, gradflow=gf.__version__)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)


def _summarize(out: dict) -> None:
    for name in ("time_clock", "accuracy_clock", "without_sliding"):
        rows = out[name]
        done = [r for r in rows if r["status"] == "completed"]
        out[name + "_summary"] = dict(
            runs=len(rows), completed=len(done),
            max_steps_completed=max((r["steps"] for r in done), default=None),
            median_steps_completed=float(np.median([r["steps"] for r in done])) if done else None,
            median_wall_s=float(np.median([r["wall_s"] for r in rows])) if rows else None)


def part_wine(seeds: int, without: int = 3) -> dict:
    data = gf.datasets.wine_one_vs_rest(2)
    out: dict = {"time_clock": [], "accuracy_clock": [], "without_sliding": []}
    for scale in (0.05, 1.0):
        for seed in range(seeds):
            model = gf.ReLUMLP([data[0].shape[1], 8, 1], key=jax.random.PRNGKey(seed), init_scale=scale)
            runs = {
                "time_clock": lambda m=model: gf.simulate_flow(m, data, 1e4, max_steps=20_000, diagnostics=NO_SHARPNESS),
                "accuracy_clock": lambda m=model: gf.simulate_flow(m, data, clock="accuracy", until_accuracy=100.0,
                                                                   max_steps=20_000, diagnostics=NO_SHARPNESS),
                "without_sliding": lambda m=model: gf.simulate_flow(m, data, 1e4, max_steps=20_000, diagnostics=NO_SHARPNESS,
                                                                    sliding=False),
            }
            for name, fn in runs.items():
                if name == "without_sliding" and seed >= without:  # each runs to max_steps: a few draws show it
                    continue
                r, wall = _timed(fn)
                row = dict(seed=seed, init_scale=scale, **_row(r, wall))
                out[name].append(row)
                print(f"  wine {name:16s} scale {scale:4} seed {seed:2d}: {row['status']:9s} steps {row['steps']:6d} "
                      f"evals {row['gradient_evaluations']} t {row['t']:.4g} ln(n/L) {row['accuracy']:.4g} "
                      f"entries {row['entries']} exits {row['exits']} {wall:.1f} s", flush=True)
                _summarize(out)
                _write("wine", out)
    for name in ("time_clock", "accuracy_clock", "without_sliding"):
        summary = out[name + "_summary"]
        print(f"  {name}: {summary['completed']}/{summary['runs']} completed, max steps {summary['max_steps_completed']}")
    return out


def _cnn_case(n: int):
    """The CNN of the ``cnn``, ``cost`` and ``approach`` parts: ``hcnn`` (1,252 parameters) on ``n``
    digits: (model, x, y)."""
    x, y = gf.datasets.digits(n=n, seed=0)
    return make_margin_model("hcnn", x.shape[1:], 10, seed=0), x, y


def _reference_case():
    """The start of the ``reference`` part (seed 1, init scale 1 on wine class 2 against the rest):
    (model, data, save times)."""
    data = gf.datasets.wine_one_vs_rest(2)
    model = gf.ReLUMLP([data[0].shape[1], 8, 1], key=jax.random.PRNGKey(1), init_scale=1.0)
    return model, data, np.array([0.0, 0.2, 2.0, 6.0, 20.0])


def part_reference() -> dict:
    model, data, times = _reference_case()
    t0 = time.perf_counter()
    runs = {eps: smoothed_flow(model, data, times, eps=eps, rtol=1e-10, atol=1e-13) for eps in REFERENCE_EPS}
    fine, mid, coarse = (runs[e] for e in sorted(REFERENCE_EPS))
    ref = (10 * fine - mid) / 9
    ref_coarse = (10 * mid - coarse) / 9
    out = dict(times=times.tolist(), eps=sorted(REFERENCE_EPS), reference_wall_s=round(time.perf_counter() - t0, 1),
               reference_uncertainty=np.abs(ref - ref_coarse).max(axis=1).tolist(), runs=[])
    for rtol, control in ((1e-8, None), (1e-10, None), (1e-8, "pid")):
        r, wall = _timed(lambda rt=rtol, c=control: gf.simulate_flow(
            model, data, 20.0, save_at=times, rtol=rt, atol=rt * 1e-2, save_params=True, diagnostics=NO_SHARPNESS,
            max_steps=100_000, step_control=c))
        w = r.diagnostics["params_flat"]
        err = np.abs(w - ref).max(axis=1)
        row = dict(rtol=rtol, step_control=r.config["step_control"], error=err.tolist(),
                   error_vs_eps={f"{e:g}": np.abs(w - runs[e]).max(axis=1).tolist() for e in sorted(REFERENCE_EPS)},
                   pairs=r.diagnostics["sliding_pairs"].astype(int).tolist(), **_row(r, wall))
        out["runs"].append(row)
        print(f"  reference rtol {rtol:g} {row['step_control']}: {r.status} steps {row['steps']} pairs {row['pairs']} max|W − W_ref| per time "
              f"{np.array2string(err, precision=2)} (reference ±{np.array2string(np.array(out['reference_uncertainty']), precision=2)})",
              flush=True)
    out["stationary"] = _stationary_start()
    return out


def _stationary_start() -> dict:
    """The start of the wine part that stops short of ln(n/L) = 100 in the accuracy clock (init scale 0.05,
    seed 10): ln(n/L) of the flow and of the ε = 1e-5 smoothed reference at t = 1 … 1000."""
    x, y = gf.datasets.wine_one_vs_rest(2)
    model = gf.ReLUMLP([x.shape[1], 8, 1], key=jax.random.PRNGKey(10), init_scale=0.05)
    times = np.array([0.0, 1.0, 10.0, 100.0, 1000.0])
    r = gf.simulate_flow(model, (x, y), 1000.0, save_at=times, max_steps=20_000, diagnostics=NO_SHARPNESS)
    w = smoothed_flow(model, (x, y), times, eps=1e-5, rtol=1e-9, atol=1e-12)
    params, static = partition(model)
    unravel = jax.flatten_util.ravel_pytree(params)[1]
    smoothed = [initial_accuracy(combine(unravel(jnp.asarray(wk)), static), (x, y)) for wk in w]
    out = dict(seed=10, init_scale=0.05, times=times.tolist(), status=r.status, accuracy=r.accuracy.tolist(),
               smoothed_accuracy=smoothed, grad_norm=r.diagnostics["grad_norm"].tolist(),
               sliding_pairs=r.diagnostics["sliding_pairs"].astype(int).tolist())
    print(f"  stationary start: ln(n/L) {np.array2string(r.accuracy, precision=5)}, smoothed reference "
          f"{np.array2string(np.array(smoothed), precision=5)}", flush=True)
    return out


def part_cnn() -> dict:
    n = 100
    model, x, y = _cnn_case(n)
    kw = dict(loss="cross_entropy", rtol=1e-5, atol=1e-8, diagnostics=NO_SHARPNESS)
    target = math.log(n) + 1
    T = 0.05
    # the reference at t = T: the default (sliding) at rtol 1e-7; its distance to the same at rtol 1e-6
    # bounds its own error (Tsit5 + PID at such tolerances chatters across the pairs that slide from t ≈ 0.001;
    # the default at rtol 1e-9 had not reached T after 20 CPU minutes)
    refs = {rt: gf.simulate_flow(model, (x, y), T, rtol=rt, atol=rt * 1e-3, loss="cross_entropy",
                                 diagnostics=NO_SHARPNESS, save_params=True, save_at=np.array([0.0, T]),
                                 max_steps=200_000) for rt in (1e-6, 1e-7)}
    ref = refs[1e-7]
    w_ref = ref.diagnostics["params_flat"][-1]
    reference_self_error = float(np.linalg.norm(refs[1e-6].diagnostics["params_flat"][-1] - w_ref) / np.linalg.norm(w_ref))
    variants = {"default": {}, "default_without_sliding": {"sliding": False},
                "tsit5_pid": {"solver": "tsit5", "step_control": "pid", "sliding": False}}
    out: dict = {"n": n, "target_accuracy": target, "error_time": T, "reference": "default at rtol 1e-7",
                 "reference_status": ref.status, "reference_steps": int(ref.stats["steps"]),
                 "reference_self_error": reference_self_error, "runs": {}}
    print(f"  cnn reference: {ref.status}, {ref.stats['steps']} steps; rtol 1e-6 vs 1e-7 at t = {T}: "
          f"{reference_self_error:.2e}", flush=True)
    for name, extra in variants.items():
        short = gf.simulate_flow(model, (x, y), T, save_params=True, save_at=np.array([0.0, T]), max_steps=200_000,
                                 **kw, **extra)
        err = float(np.linalg.norm(short.diagnostics["params_flat"][-1] - w_ref) / np.linalg.norm(w_ref))
        r, wall = _timed(lambda e=extra: gf.simulate_flow(model, (x, y), 100.0, until_accuracy=target,
                                                          max_steps=300_000, num_save=30, **kw, **e))
        row = dict(relative_error_at_T=err, evaluations_to_T=short.stats["gradient_evaluations"], **_row(r, wall))
        out["runs"][name] = row
        _write("cnn", out)
        print(f"  cnn {name:24s}: {row['status']} steps {row['steps']} evals {row['gradient_evaluations']} "
              f"t {row['t']:.4g} error at t={T}: {err:.2e} {wall:.0f} s", flush=True)
    d = out["runs"]
    out["evaluations_ratio_tsit5_pid_over_default"] = d["tsit5_pid"]["gradient_evaluations"] / d["default"]["gradient_evaluations"]
    out["evaluations_ratio_without_sliding_over_default"] = (d["default_without_sliding"]["gradient_evaluations"]
                                                             / d["default"]["gradient_evaluations"])
    return out


def part_mlp() -> dict:
    from flax import nnx

    x, y = gf.datasets.wine_one_vs_rest(1)
    d = x.shape[1]
    with gf.x64():
        mlp = eqx.nn.MLP(d, "scalar", 8, 3, activation=jax.nn.relu, use_bias=False, use_final_bias=False,
                         key=jax.random.PRNGKey(0))
        weights = [jnp.asarray(layer.weight, jnp.float64) for layer in mlp.layers]
        mlp = eqx.tree_at(lambda m: [layer.weight for layer in m.layers], mlp, weights)

        class Net(nnx.Module):
            def __init__(self):
                self.layers = nnx.List([nnx.Linear(w.shape[1], w.shape[0], use_bias=False, rngs=nnx.Rngs(0))
                                        for w in weights])
                for layer, w in zip(self.layers, weights, strict=True):
                    layer.kernel.value = w.T

            def __call__(self, x_):
                for layer in self.layers[:-1]:
                    x_ = jax.nn.relu(layer(x_))
                return self.layers[-1](x_)[..., 0]

        def fn(p, x_):
            for w in p[:-1]:
                x_ = jax.nn.relu(x_ @ w.T)
            return (x_ @ p[-1].T)[..., 0]

        own = gf.ReLUMLP([d, 8, 8, 8, 1], key=jax.random.PRNGKey(0))
        own = eqx.tree_at(lambda m: list(m.layers), own, list(weights))
        reps = {"gradflow": (own, lambda m: list(m.layers)),
                "equinox": (gf.as_model(mlp, degree=4), lambda m: [layer.weight for layer in m.layers]),
                "function": (gf.as_model(fn, list(weights), degree=4, batched=True), lambda m: list(m.params)),
                "flax_nnx": (gf.as_model(Net(), degree=4), lambda m: [layer.kernel.value.T for layer in m.layers])}
    out: dict = {"four_way_t": MLP_FOUR_WAY_T, "runs": {}}
    finals = {}
    for name, (model, layers) in reps.items():
        r, wall = _timed(lambda m=model: gf.simulate_flow(m, (x, y), MLP_FOUR_WAY_T, loss="logistic", rtol=1e-10,
                                                          atol=1e-12, diagnostics=NO_SHARPNESS, max_steps=100_000))
        out["runs"][name] = _row(r, wall)
        finals[name] = np.concatenate([np.asarray(w).ravel() for w in layers(r.model)])
        print(f"  mlp {name:9s} to t = {MLP_FOUR_WAY_T}: {r.status} steps {r.stats['steps']} evals "
              f"{r.stats['gradient_evaluations']} entries {r.stats['sliding_entries']} exits {r.stats['sliding_exits']} "
              f"ln(n/L) {r.accuracy[-1]:.6g} {wall:.0f} s", flush=True)
    base = finals["gradflow"]
    out["max_parameter_difference"] = {k: float(np.max(np.abs(v - base))) for k, v in finals.items() if k != "gradflow"}
    print("  mlp max |W − W_gradflow|:", out["max_parameter_difference"])
    _write("mlp", out)
    for rtol in MLP_T20_RTOLS:
        r, wall = _timed(lambda rt=rtol: gf.simulate_flow(reps["equinox"][0], (x, y), 20.0, loss="logistic", rtol=rt,
                                                          atol=rt * 1e-2, diagnostics=NO_SHARPNESS, max_steps=100_000))
        out[f"equinox_t20_rtol{rtol:g}"] = _row(r, wall)
        print(f"  mlp equinox to t = 20, rtol {rtol:g}: {r.status} steps {r.stats['steps']} evals "
              f"{r.stats['gradient_evaluations']} entries {r.stats['sliding_entries']} exits {r.stats['sliding_exits']} "
              f"{wall:.0f} s", flush=True)
        _write("mlp", out)
    return out


def _bare_gradient(prob):
    """The bare gradient of a prepared problem: a jitted ``jax.grad`` of its mean loss."""
    xs, ys, loss, static, n = prob.x, prob.y, prob.loss, prob.static, prob.n
    return jax.jit(jax.grad(lambda p: jnp.exp(loss.log_loss(combine(p, static)(xs), ys)) / n))


def _bare_gradient_us(model, x, y, reps: int = 200, loss_name: str = "cross_entropy") -> float:
    """Median wall time of a jitted ``jax.grad`` of the mean loss ``loss_name`` on the same data (µs)."""
    from gradflow.problem import prepare_problem

    with gf.x64():
        prob = prepare_problem(model, (x, y), loss_name, "float64", False, "benchmark")
        grad = _bare_gradient(prob)
        jax.block_until_ready(grad(prob.params0))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(grad(prob.params0))
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def _phases(model, x, y, checkpoint: str) -> dict:
    """Wall time of each phase of a sliding step at the state a checkpoint holds, each timed as its
    own jitted function (median of 50), in bare gradients timed just before it (median of 50; a
    single bare timing for all phases let the machine's drift move one phase by 2.3×): a stage (the
    sliding field: a gradient with the kinks re-evaluated, and the projection on the |A| normals), the
    entry JVP (read at the sliding pairs: through the examples that own them), one normal (through its
    example), the box solve and the Cholesky factor on the set's bucket."""
    from gradflow.kinkmap import field_kinks
    from gradflow.problem import prepare_problem
    from gradflow.sliding import SlideState, Sliding, box_qp, bucket_sizes, initial_slide, ridge

    def median_us(f, *a):
        jax.block_until_ready(f(*a))
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) * 1e6

    with gf.x64():
        prob = prepare_problem(model, (x, y), "cross_entropy", "float64", False, "benchmark")
        bare = _bare_gradient(prob)

        def med(f, *a):
            return median_us(f, *a) / median_us(bare, prob.params0)

        saved = np.load(checkpoint)
        leaves, treedef = jax.tree_util.tree_flatten(prob.params0)
        params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(saved[f"state/params/{i}"])
                                                        for i in range(len(leaves))])
        slide_leaves = [jnp.asarray(saved[f"state/slide/{i}"]) for i in range(len(SlideState.__dataclass_fields__))]
        capacity = slide_leaves[0].shape[0]
        k = sum(int(a.size) for a in leaves)
        like = initial_slide(capacity, k, jnp.float64)
        slide = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), slide_leaves)
        field = field_kinks(prob.params0, prob.static, prob.x)
        sliding = Sliding(field.sites, 1e-5, capacity, field.example)
        active = int(jnp.sum(slide.slots >= 0))
        m = next(b for b in bucket_sizes(capacity) if b >= active)
        static, xs, ys, loss = prob.static, prob.x, prob.y, prob.loss
        stage = jax.jit(lambda p, sl: sliding.project(p, static, xs, ys, loss, sl, lambda pt: 1.0))
        pattern = sliding.pattern(slide)
        # the step end's JVP, read at the sliding pairs (a step with a crossing reads the crossed pairs too)
        jvp = jax.jit(lambda p, v: sliding.kink_rates(p, static, xs, pattern, v, pattern.active))
        one = jnp.zeros_like(slide.slots, dtype=bool).at[0].set(True)
        normal = jax.jit(lambda p, sl: sliding.normal_rows(p, static, xs, pattern, sl.slots, one, sl.normals))
        rows = slide.normals[:m]
        valid = slide.slots[:m] >= 0
        qp = jax.jit(lambda g, r: box_qp(g, r, -jnp.ones(m), jnp.zeros(m), valid))
        chol = jax.jit(lambda g: jnp.linalg.cholesky(ridge(g, valid)))
        gram = rows @ rows.T
        return dict(active_pairs=active, bucket=m, capacity=capacity,
                    stage=med(stage, params, slide), entry_jvp=med(jvp, params, params),
                    one_normal=med(normal, params, slide), box_qp=med(qp, gram, jnp.ones(m)), cholesky=med(chol, gram))


def part_cost(churn_n: int | None = 300, churn_rtols: tuple = (1e-5, 1e-6, 1e-7), transient: bool = True,
              write=lambda out: _write("cost", out)) -> dict:
    """The cost of the sliding flow in wall time, measured side by side in one process (issue 25).

    ``hcnn`` on 100 digits, cross-entropy, rtol 1e-5: a bare jitted gradient of the same mean
    cross-entropy; the default (sliding) and Tsit5 + diffrax's PID without sliding to t = 0.05,
    each after a call that compiles the same solve: wall per step and per counted gradient
    evaluation, in bare gradients; the phases of a sliding step (:func:`_phases`); and the whole
    transient to ln(n/L) = ln n + 1 of both (evaluations, wall time, their ratio, and the changes of
    the sliding set against its entries). ``churn_n``: the default's transient on that many digits
    too (changes against entries); ``churn_rtols``: the rtols of the churn's settling test;
    ``transient``: run the transients; ``write``: called with the results after every run
    (benchmarks/gpu.py writes them elsewhere)."""
    import tempfile

    n = 100
    model, x, y = _cnn_case(n)
    kw = dict(loss="cross_entropy", rtol=1e-5, atol=1e-8, diagnostics=NO_SHARPNESS, max_steps=300_000)
    T = 0.05
    # the bare gradient is timed before and after each run (this machine's speed drifts between minutes:
    # single measurements here differed by 1.7×); the ratios use the median of those timings
    bares = [_bare_gradient_us(model, x, y)]
    out: dict = {"n": n, "T": T, "per_step": {}, "transient": {}}
    variants = {"default": {}, "tsit5_pid": {"solver": "tsit5", "step_control": "pid", "sliding": False}}
    checkpoint = os.path.join(tempfile.mkdtemp(), "cost.npz")
    short = dict(save_at=np.array([0.0, T / 2, T]))
    for name, extra in variants.items():
        gf.simulate_flow(model, (x, y), T / 50, **kw, **extra, save_at=np.array([0.0, T / 100, T / 50]))  # compiles
        run = gf.RunOptions(checkpoint=checkpoint, checkpoint_every=3) if name == "default" else gf.RunOptions()
        r, wall = _timed(lambda e=extra, rn=run: gf.simulate_flow(model, (x, y), T, **kw, **e, **short, run=rn))
        bares.append(_bare_gradient_us(model, x, y))
        st = r.stats
        out["per_step"][name] = dict(status=r.status, steps=st["steps"], gradient_evaluations=st["gradient_evaluations"],
                                     wall_s=wall, **{k: v for k, v in st.items() if k.startswith("sliding_")})
    bare = float(np.median(bares))
    out["bare_gradient_us"], out["bare_gradient_us_samples"] = bare, bares
    print(f"  bare gradient {bare:.0f} us (samples {', '.join(f'{b:.0f}' for b in bares)})", flush=True)
    for name, row in out["per_step"].items():
        row["per_step_bare_gradients"] = row["wall_s"] / row["steps"] / (bare * 1e-6)
        row["per_evaluation_bare_gradients"] = row["wall_s"] / row["gradient_evaluations"] / (bare * 1e-6)
        print(f"  to t = {T}: {name:10s} {row['steps']} steps, {row['gradient_evaluations']} evals, {row['wall_s']:.1f} s: "
              f"{row['per_step_bare_gradients']:.2f} bare gradients per step, "
              f"{row['per_evaluation_bare_gradients']:.2f} per evaluation", flush=True)
    write(out)
    out["phases_bare_gradients"] = _phases(model, x, y, checkpoint)
    print("  phases:", out["phases_bare_gradients"], flush=True)
    # is the churn real (pairs that truly slide briefly) or made by the entry rule at this step size?
    # Then its counts would not settle as rtol shrinks; real slides converge to the flow's own.
    out["churn_vs_rtol"] = {}
    for rtol in churn_rtols:
        r = gf.simulate_flow(model, (x, y), T, **(kw | dict(rtol=rtol, atol=rtol * 1e-3)), **short)
        out["churn_vs_rtol"][f"{rtol:.0e}"] = dict(steps=r.stats["steps"], **{
            k: r.stats[k] for k in ("sliding_entries", "sliding_exits", "sliding_brief_exits", "sliding_changes",
                                    "sliding_drift_changes")})
        print(f"  churn at rtol {rtol:.0e}: {out['churn_vs_rtol'][f'{rtol:.0e}']}", flush=True)
        write(out)
    if not transient:
        return out
    target = math.log(n) + 1
    for name, extra in variants.items():
        # compiles the same solve (the stop at the target and t_max are traced): a very short run
        gf.simulate_flow(model, (x, y), 1e-4, until_accuracy=target, num_save=30, **kw, **extra)
        r, wall = _timed(lambda e=extra: gf.simulate_flow(model, (x, y), 100.0, until_accuracy=target, num_save=30,
                                                          **kw, **e))
        out["transient"][name] = dict(_row(r, wall), changes=r.stats.get("sliding_changes"),
                                      **{k: v for k, v in r.stats.items() if k.startswith("sliding_")})
        print(f"  transient {name:10s}: {r.status} {r.stats['steps']} steps {r.stats['gradient_evaluations']} evals "
              f"{wall:.0f} s", flush=True)
        write(out)
    d, t = out["transient"]["default"], out["transient"]["tsit5_pid"]
    out["transient_wall_ratio_tsit5_pid_over_default"] = t["wall_s"] / d["wall_s"]
    out["transient_evaluations_ratio_tsit5_pid_over_default"] = t["gradient_evaluations"] / d["gradient_evaluations"]
    out["transient_changes_over_entries"] = d["sliding_changes"] / max(d["sliding_entries"], 1)
    if churn_n:
        xc, yc = gf.datasets.digits(n=churn_n, seed=0)
        r, wall = _timed(lambda: gf.simulate_flow(model, (xc, yc), 100.0, until_accuracy=math.log(churn_n) + 1,
                                                  num_save=30, **kw))
        out["churn"] = dict(_row(r, wall), n=churn_n, **{k: v for k, v in r.stats.items() if k.startswith("sliding_")},
                            changes_over_entries=r.stats["sliding_changes"] / max(r.stats["sliding_entries"], 1))
        print(f"  {churn_n} digits: {r.status} {r.stats['steps']} steps, changes/entries "
              f"{out['churn']['changes_over_entries']:.2f}", flush=True)
    return out


APPROACH_VALUES = (0.25, 0.1, 0.0)


def _approach_cases(approach: float | None) -> dict:
    """The two cases of :func:`part_approach` with the entry rule's ``APPROACH`` set to ``approach``
    (None: the library's): the CNN at rtol 1e-5 to t = 0.05, the wine net at rtol 1e-8 to t = 20."""
    import gradflow.flow.sliding_solver as solver_module

    if approach is not None:
        solver_module.APPROACH = approach  # read when the solve is traced: this process traces it first
    model, x, y = _cnn_case(100)
    out = {}
    cnn_kw = dict(loss="cross_entropy", rtol=1e-5, atol=1e-8, diagnostics=NO_SHARPNESS, save_params=True,
                  max_steps=300_000)
    gf.simulate_flow(model, (x, y), 0.001, save_at=np.array([0.0, 0.001]), **cnn_kw)  # compiles the same solve
    r, wall = _timed(lambda: gf.simulate_flow(model, (x, y), 0.05, save_at=np.array([0.0, 0.05]), **cnn_kw))
    out["cnn"] = dict(_row(r, wall), W=r.diagnostics["params_flat"][-1].tolist(),
                      **{k: v for k, v in r.stats.items() if k.startswith("sliding_")})
    wine, data, times = _reference_case()
    wine_kw = dict(rtol=1e-8, atol=1e-10, save_params=True, diagnostics=NO_SHARPNESS, max_steps=100_000)
    gf.simulate_flow(wine, data, 0.2, save_at=times / 100, **wine_kw)  # compiles the same solve
    r, wall = _timed(lambda: gf.simulate_flow(wine, data, 20.0, save_at=times, **wine_kw))
    out["wine"] = dict(_row(r, wall), W=r.diagnostics["params_flat"].tolist(),
                       **{k: v for k, v in r.stats.items() if k.startswith("sliding_")})
    return out


def part_approach() -> dict:
    """What the approach rule of the entries buys (issue 25: is the churn of the sliding set real?).

    A free pair enters A when its z changed sign over a step (and the field on its new side points
    back), or when it *approaches* its surface: within the band, and |z| ≤ APPROACH · |Δz| of the
    step. Most changes of A at rtol 1e-5 come from approaching pairs that the box solve then turns
    away. Each value of APPROACH runs in its own process (the constant is read when the solve is
    traced): the CNN of the ``cost`` part to t = 0.05 at rtol 1e-5 (work, changes, and W's relative
    error against the default at rtol 1e-7), and the wine net of the ``reference`` part at rtol 1e-8
    to t = 20 (max |W − W_ref| at its save points against the default at rtol 1e-10, whose own
    distance to the independent reference is ~2e-7 there)."""
    import subprocess
    import sys

    def child(approach):
        code = ("import json, sys, warnings; warnings.simplefilter('ignore');"
                "from benchmarks.sliding import _approach_cases;"
                f"print('RESULT' + json.dumps(_approach_cases({approach!r})))")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return json.loads(next(ln for ln in run.stdout.splitlines() if ln.startswith("RESULT"))[6:])

    model, x, y = _cnn_case(100)
    ref_cnn = gf.simulate_flow(model, (x, y), 0.05, loss="cross_entropy", rtol=1e-7, atol=1e-10,
                               diagnostics=NO_SHARPNESS, save_at=np.array([0.0, 0.05]), save_params=True,
                               max_steps=300_000).diagnostics["params_flat"][-1]
    wine, data, times = _reference_case()
    ref_wine = gf.simulate_flow(wine, data, 20.0, save_at=times, rtol=1e-10,
                                atol=1e-12, save_params=True, diagnostics=NO_SHARPNESS,
                                max_steps=200_000).diagnostics["params_flat"]
    out: dict = {"default": APPROACH, "runs": {}}
    for value in APPROACH_VALUES:
        res = child(value)
        cnn, wine_row = res["cnn"], res["wine"]
        w = np.asarray(cnn.pop("W"))
        cnn["relative_error_W"] = float(np.linalg.norm(w - ref_cnn) / np.linalg.norm(ref_cnn))
        wine_row["error"] = np.abs(np.asarray(wine_row.pop("W")) - ref_wine).max(axis=1).tolist()
        out["runs"][f"{value:g}"] = dict(cnn=cnn, wine=wine_row)
        print(f"  APPROACH {value:g}: cnn {cnn['steps']} steps {cnn['gradient_evaluations']} evals {cnn['wall_s']:.1f} s "
              f"changes {cnn['sliding_changes']} normals {cnn['sliding_normals']} rel err {cnn['relative_error_W']:.2e}; "
              f"wine {wine_row['steps']} steps err {np.array2string(np.array(wine_row['error']), precision=2)}", flush=True)
        _write("approach", out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["wine", "reference", "cnn", "mlp", "cost", "approach"], action="append")
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)  # L(W₀) ≥ ℓ(0) at small init scales
    parts = args.only or ["wine", "reference", "cnn", "mlp", "cost", "approach"]
    for part in parts:
        print(f"[{part}]", flush=True)
        fn = {"wine": lambda: part_wine(args.seeds), "reference": part_reference, "cnn": part_cnn, "mlp": part_mlp,
              "cost": part_cost, "approach": part_approach}[part]
        _write(part, fn())
    print("wrote", RESULTS)


if __name__ == "__main__":
    main()
