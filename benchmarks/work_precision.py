r"""Work–precision: error of W/‖W‖ at a fixed ln(n/L) against gradient evaluations.

Schemes
  * gradflow's solvers in the accuracy clock (``simulate_flow(clock="accuracy",
    until_accuracy=K)``), over a sweep of rtol (atol = 1e-3·rtol): explicit ``tsit5``, ``dopri5``;
    implicit matrix-free ``kvaerno5`` as gradflow builds it today (optimistix Newton, Cauchy test at
    10× the tolerances), and ``kvaerno5-rel``: Kvaerno5 with the relative-termination Newton of
    ``benchmarks/reach.py`` and a PI controller (pcoeff 0.3, icoeff 0.4, safety 0.8);
  * classical RK4 with a fixed step h = c/λ, λ the sharpness (top Hessian eigenvalue of L at W₀, by
    power iteration on Hessian-vector products; L's sharpness only falls along these runs), in the
    physical-time clock, written as a jitted ``lax.scan`` (diffrax has no classical RK4 among its
    named solvers); c ∈ {2.5 (≈ its stability limit 2.785), 2, 1, 0.5, …};
  * Euler = gradient descent with the fixed step h = c/λ, c ∈ {1.9, 1, 0.5, …}.

The error: ‖W/‖W‖ − W*/‖W*‖‖₂ with W* from a tight reference (below; its self-check is printed). The fixed-step schemes integrate in t,
to exactly T* = t(K) of the reference (N = ⌈T*/h⌉ steps of T*/N), so they are compared at the same
point of the true trajectory.

Counting (gradient-equivalents): each forward pass of the model inside the solve is one gradient
evaluation (every vector-field evaluation, and every Newton linearisation, is one forward + one
backward pass); it is counted exactly by a ``jax.debug.callback`` inside a model wrapper, minus the
4 passes simulate_flow makes outside the solve (initial loss, initial α, the two save points).
Hessian-vector products are counted exactly too: GMRES gets its operator wrapped in a
matvec that fires a callback (each matvec is one JVP of ∇α, i.e. one HVP). Note that lineax's GMRES
runs all ``restart`` Arnoldi steps of a cycle before testing convergence (it stops early only on
breakdown), so a cycle costs min(restart, k) + 1 HVPs however easy the system. Each HVP counts as
one gradient. RK4 costs 4 gradients per step, Euler 1.

Reference: Dopri8 at rtol 1e-12 (accuracy clock), checked against rtol 1e-11.

Problems: (1) iris setosa/versicolor, linear model, exponential loss, from the start of
``reach.py`` (ln(n/L₀) ≈ 10.2) to K = ln(n/L₀) + 5 (quick: + 3); (2) Figure 1: two-layer squared-ReLU
net (width 1,000, random fixed signs) on Appendix A synthetic 2-D data with a constant-1 feature, to
K = 5 (quick: 3).

Writes ``benchmarks/results/work_precision.json`` and ``work_precision.png``; prints the ratio of
gradient evaluations at error 1e-6 (log-log interpolation of each curve; extrapolation is marked)
for the best gradflow solver against RK4 and against Euler.

    python benchmarks/work_precision.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax.flatten_util import ravel_pytree

import gradflow

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reach import CONTROLLER, RelativeNewton, make_models, start_direction, svm_direction  # noqa: E402

warnings.filterwarnings("ignore", message=".*Assumption 2.3.*")

TARGET_ERR = 1e-6
_FWD = [0]
_GMRES = [0]
_OVERHEAD = 4  # forward passes of simulate_flow outside the solve with save_at=[K]


def _inc_fwd():
    _FWD[0] += 1


class Counted(eqx.Module):
    """A gradflow model that counts its forward passes (host callback; exact)."""

    inner: eqx.Module

    @property
    def degree(self):
        return self.inner.degree

    def __call__(self, x):
        jax.debug.callback(_inc_fwd)
        return self.inner(x)


def _inc_hvp():
    _GMRES[0] += 1


class CountingGMRES(lx.GMRES):
    """lineax GMRES whose operator counts its own matvecs (Hessian-vector products; exact)."""

    def compute(self, state, vector, options):
        operator = state

        def mv(v):
            jax.debug.callback(_inc_hvp)
            return operator.mv(v)

        counted = lx.FunctionLinearOperator(mv, operator.in_structure())
        return super().compute(counted, vector, options)


def _dyn(v):
    """A tolerance as a 0-d float64 array: traced, so a new rtol does not recompile the solve."""
    return np.asarray(v, dtype=np.float64)


def gradflow_solver(name: str, rtol: float, atol: float, count: bool = True):
    gmres = CountingGMRES if count else lx.GMRES
    if name == "tsit5":
        return diffrax.Tsit5(), {}
    if name == "dopri5":
        return diffrax.Dopri5(), {}
    if name == "dopri8":
        return diffrax.Dopri8(), {}
    if name == "kvaerno5":  # as gradflow.solvers builds it today, with a counting GMRES
        import optimistix as optx

        rf = optx.Newton(rtol=_dyn(10 * rtol), atol=_dyn(10 * atol),
                         linear_solver=gmres(rtol=_dyn(rtol), atol=_dyn(atol), max_steps=200, restart=20))
        return diffrax.Kvaerno5(root_finder=rf), {}
    if name == "kvaerno5-rel":
        rf = RelativeNewton(rtol=_dyn(rtol), atol=_dyn(atol), cauchy_termination=False,
                            linear_solver=gmres(rtol=_dyn(rtol), atol=_dyn(atol), max_steps=200, restart=20))
        return diffrax.Kvaerno5(root_finder=rf, root_find_max_steps=10), dict(CONTROLLER)
    raise ValueError(name)


def flow_run(model, data, loss, K, name, rtol, *, max_steps=20_000, count=True):
    atol = 1e-3 * rtol
    solver, ctrl = gradflow_solver(name, rtol, atol, count)
    _FWD[0] = 0
    _GMRES[0] = 0
    r = gradflow.simulate_flow(Counted(model) if count else model, data, loss=loss, clock="accuracy", until_accuracy=K, solver=solver, rtol=rtol,
                               atol=atol, max_steps=max_steps, save_at=np.array([K]), check_degree=False, controller_options=ctrl)
    jax.effects_barrier()
    w = np.concatenate([np.ravel(v) for v in r.params.values()])
    return dict(w=w, status=r.status, steps=r.stats["steps"], rejected=r.stats["rejected_steps"], forward=_FWD[0] - _OVERHEAD,
                hvp=_GMRES[0], log_t=float(r.diagnostics["log_t"][-1]), wall=r.stats["wall_time"])


# ----------------------------------------------------------------------------- fixed-step schemes


def physical_loss(model, x, y, loss):
    params, static = gradflow.params.partition(model) if hasattr(gradflow, "params") else None
    flat, unravel = ravel_pytree(params)
    lossf = gradflow.get_loss(loss)

    def L(w):
        m = gradflow.params.combine(unravel(w), static)
        return jnp.exp(lossf.log_loss(m(x), y))

    return flat, L


def sharpness(L, w, iters=100):
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(L), (w,), (v,))[1])
    v = jnp.ones_like(w) / math.sqrt(w.size)
    lam = 0.0
    for _ in range(iters):
        hv = hvp(v)
        lam = float(jnp.vdot(v, hv))
        v = hv / jnp.linalg.norm(hv)
    return lam


def fixed_step(L, w0, T, n_steps, scheme):
    g = jax.grad(L)
    h = T / n_steps

    def euler(w, _):
        return w - h * g(w), None

    def rk4(w, _):
        k1 = -g(w)
        k2 = -g(w + 0.5 * h * k1)
        k3 = -g(w + 0.5 * h * k2)
        k4 = -g(w + h * k3)
        return w + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4), None

    step = {"euler": euler, "rk4": rk4}[scheme]

    @jax.jit
    def go(w0):
        return jax.lax.scan(step, w0, None, length=n_steps)[0]

    return np.asarray(go(w0))


# ------------------------------------------------------------------------------------ problems


def appendix_a_data(n: int, seed: int):
    try:
        from gradflow.datasets import appendix_a_synthetic  # type: ignore[import-not-found]

        ds = appendix_a_synthetic(n=n, seed=seed)
        return (np.asarray(ds.x), np.asarray(ds.y)) if hasattr(ds, "x") else (np.asarray(ds[0]), np.asarray(ds[1]))
    except (ImportError, TypeError):
        pass
    rng = np.random.default_rng(seed)  # random ReLU teacher with bias; delete the 40% lowest-margin points
    z = rng.uniform(-1, 1, size=(4 * n, 2))
    u, b, a = rng.standard_normal((8, 2)), rng.standard_normal(8) * 0.5, rng.standard_normal(8)
    f = np.maximum(z @ u.T + b, 0) @ a
    f = f - np.median(f)
    keep = np.argsort(-np.abs(f))[: int(0.6 * len(f))]
    keep = rng.permutation(keep)[:n]
    return np.concatenate([z[keep], np.ones((len(keep), 1))], axis=1), np.sign(f[keep])


def problems(quick: bool, horizon: float | None = None, only: str | None = None):
    x, y = gradflow.datasets.iris_binary()
    sv, gamma = svm_direction(x, y)
    v = start_direction(x, y, sv, gamma)
    lin = make_models(x, y, v, "exponential")["linear"]
    acc0 = float(np.log(len(y)) - gradflow.get_loss("exponential").log_loss(jnp.asarray(x @ np.asarray(lin.w)), jnp.asarray(y)))
    out = {"iris_linear": dict(model=lin, data=(x, y), loss="exponential", K=acc0 + (horizon or (3.0 if quick else 5.0)))}
    if only == "iris_linear":
        return out
    if only == "fig1_squared_relu":
        out = {}
    xs, ys = appendix_a_data(30 if quick else 60, 0)
    with gradflow.x64():
        # init_scale ≈ m^(-1/4): outputs O(1) at width m (scale 1 gives outputs ~ √m and a sharpness ~ 1e8)
        net = gradflow.TwoLayerSquaredReLU(3, 1000, key=jax.random.key(0), signs="random", init_scale=1000 ** -0.25)
    out["fig1_squared_relu"] = dict(model=net, data=(xs, ys), loss="exponential", K=horizon or (3.0 if quick else 5.0))
    return out


# ---------------------------------------------------------------------------------------- main


def _unit(w):
    return w / np.linalg.norm(w)


def cost_at(errors, costs, target=TARGET_ERR):
    """Gradient evaluations at error ``target`` by log-log interpolation along the curve (sorted by
    cost); linear extrapolation from the two nearest points if the curve does not reach it."""
    e = np.asarray(errors, float)
    c = np.asarray(costs, float)
    ok = np.isfinite(e) & (e > 0) & np.isfinite(c)
    e, c = e[ok], c[ok]
    if len(e) < 2:
        return None, "n/a"
    order = np.argsort(c)
    le, lc = np.log(e[order]), np.log(c[order])
    lt = math.log(target)
    for i in range(len(le) - 1):
        if (le[i] - lt) * (le[i + 1] - lt) <= 0 and le[i] != le[i + 1]:
            f = (lt - le[i]) / (le[i + 1] - le[i])
            return float(np.exp(lc[i] + f * (lc[i + 1] - lc[i]))), "interpolated"
    # extrapolate with the two points closest to the target in error
    idx = np.argsort(np.abs(le - lt))[:2]
    i, j = sorted(idx, key=lambda k: lc[k])
    if le[i] == le[j]:
        return None, "n/a"
    slope = (lc[j] - lc[i]) / (le[j] - le[i])
    return float(np.exp(lc[i] + slope * (lt - le[i]))), "extrapolated"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--horizon", type=float, default=None, help="iris: K = ln(n/L0) + horizon; Figure 1: K = horizon (default 3 quick, 5 full)")
    ap.add_argument("--only", choices=["iris_linear", "fig1_squared_relu"], default=None, help="run one problem only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    quick = args.quick
    t_start = time.perf_counter()
    rtols = [1e-4, 1e-7, 1e-10] if quick else [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10]
    flow_solvers = ["tsit5", "kvaerno5-rel"] if quick else ["tsit5", "dopri5", "kvaerno5", "kvaerno5-rel"]
    rk4_cs = [2.5, 1.0, 0.4] if quick else [2.5, 2.0, 1.0, 0.5, 0.25, 0.1]
    euler_cs = [1.9, 0.5, 0.1] if quick else [1.9, 1.0, 0.5, 0.25, 0.1]
    max_fixed_steps = 2_000_000 if quick else 20_000_000
    results = {}
    for pname, prob in problems(quick, args.horizon, args.only).items():
        model, (x, y), loss, K = prob["model"], prob["data"], prob["loss"], prob["K"]
        print(f"\n=== {pname}: n={len(y)}, params={gradflow.num_params(model)}, K = ln(n/L) = {K:.4g}", flush=True)
        # reference: Dopri8 at rtol 1e-12 (in the accuracy clock, stable at these horizons), checked
        # against Dopri8 at rtol 1e-11. (Kvaerno5-rel at rtol 1e-12 hits Newton's round-off floor and
        # crawls: 17,537 steps on iris, vs 285 at 1e-10; it agreed with Dopri8 to 4.7e-14.)
        ref = flow_run(model, (x, y), loss, K, "dopri8", 1e-12, max_steps=500_000, count=False)
        ref2 = flow_run(model, (x, y), loss, K, "dopri8", 1e-11, max_steps=500_000, count=False)
        wref = _unit(ref["w"])
        ref_gap = float(np.linalg.norm(_unit(ref2["w"]) - wref))
        T = math.exp(ref["log_t"])
        print(f"reference: dopri8 rtol 1e-12 ({ref['status']}, {ref['steps']} steps) vs rtol 1e-11 "
              f"({ref2['status']}, {ref2['steps']} steps): ‖Δ(W/‖W‖)‖ = {ref_gap:.2e}; T* = t(K) = {T:.4g}", flush=True)
        res = dict(K=K, T=T, reference_gap=ref_gap, schemes={})
        for name in flow_solvers:
            rows = []
            for rtol in rtols:
                r = flow_run(model, (x, y), loss, K, name, rtol)
                err = float(np.linalg.norm(_unit(r["w"]) - wref)) if r["status"] == "completed" else float("nan")
                rows.append(dict(rtol=rtol, error=err, gradients=r["forward"], hvps=r["hvp"], cost=r["forward"] + r["hvp"],
                                 steps=r["steps"], rejected=r["rejected"], status=r["status"], wall=r["wall"]))
                print(f"  {name:13s} rtol {rtol:.0e}: err {err:.2e}  cost {r['forward'] + r['hvp']:>9d} "
                      f"(grads {r['forward']}, HVPs {r['hvp']})  steps {r['steps']} rej {r['rejected']}  {r['status']}", flush=True)
            res["schemes"][name] = rows
        with gradflow.x64():
            w0, L = physical_loss(model, jnp.asarray(x), jnp.asarray(y if loss != "cross_entropy" else y), loss)
            lam = sharpness(L, w0)
            res["sharpness"] = lam
            print(f"  sharpness λ(W₀) = {lam:.4g}; T*·λ = {T * lam:.3g}", flush=True)
            for scheme, cs, per in (("rk4", rk4_cs, 4), ("euler", euler_cs, 1)):
                rows = []
                for c in cs:
                    n_steps = int(math.ceil(T * lam / c))
                    if n_steps > max_fixed_steps:
                        print(f"  {scheme:13s} c={c}: {n_steps} steps > budget {max_fixed_steps}, skipped", flush=True)
                        continue
                    t0 = time.perf_counter()
                    w = fixed_step(L, w0, T, n_steps, scheme)
                    err = float(np.linalg.norm(_unit(w) - wref)) if np.all(np.isfinite(w)) else float("nan")
                    rows.append(dict(c=c, h=T / n_steps, steps=n_steps, cost=per * n_steps, error=err, wall=time.perf_counter() - t0))
                    print(f"  {scheme:13s} c={c:<5g}: err {err:.2e}  cost {per * n_steps:>9d}  ({n_steps} steps)", flush=True)
                res["schemes"][scheme] = rows
        # ratios at the target error
        at = {}
        for name, rows in res["schemes"].items():
            at[name] = cost_at([r["error"] for r in rows], [r["cost"] for r in rows])
        res["cost_at_1e-6"] = {k: dict(cost=v[0], how=v[1]) for k, v in at.items()}
        best = min((k for k in flow_solvers if at[k][0] is not None), key=lambda k: at[k][0], default=None)
        res["best_gradflow"] = best
        if best is not None:
            for other in ("rk4", "euler"):
                if at.get(other, (None,))[0] is not None:
                    ratio = at[other][0] / at[best][0]
                    res[f"ratio_vs_{other}"] = ratio
                    print(f"  cost at error 1e-6: {other} {at[other][0]:.3g} ({at[other][1]}) / {best} {at[best][0]:.3g} "
                          f"({at[best][1]}) = {ratio:.3g}x", flush=True)
        results[pname] = res
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "work_precision.json"), "w") as fh:
        json.dump(dict(quick=quick, horizon=args.horizon, only=args.only, target_error=TARGET_ERR, problems=results, wall=time.perf_counter() - t_start), fh, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5))
        for ax, (pname, res) in zip(np.atleast_1d(axes), results.items(), strict=True):
            for name, rows in res["schemes"].items():
                c = [r["cost"] for r in rows if np.isfinite(r["error"]) and r["error"] > 0]
                e = [r["error"] for r in rows if np.isfinite(r["error"]) and r["error"] > 0]
                ax.loglog(c, e, "o-", label=name)
            ax.axhline(TARGET_ERR, color="gray", ls=":")
            ax.set_xlabel("gradient evaluations (HVP = 1)")
            ax.set_ylabel("‖W/‖W‖ − W*/‖W*‖‖ at ln(n/L) = K")
            ax.set_title(f"{pname}, K={res['K']:.3g}")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "work_precision.png"), dpi=110)
    except ImportError:
        print("matplotlib missing: no PNG")
    print(f"\nwrote {args.out}/work_precision.json (+ .png); total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
