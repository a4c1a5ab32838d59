r"""Reach ln(n/L) = 10⁴ on iris with an implicit solver in the accuracy clock, and watch W/‖W‖ turn
to the hard-margin SVM direction (Proposition 4.4).

Problem: iris setosa (−1) vs versicolor (+1), the first two features and a constant 1, rows scaled
to max norm 1 (n = 100, SVM margin γ ≈ 0.0067: a nearly non-separable, stiff problem). Models: a
linear predictor and a depth-3 deep linear network (its end-to-end product ``model.product()``);
losses: exponential and logistic. Each run integrates dW/dα = ∇α/‖∇α‖² from L(W₀) < ℓ(0) to
ln(n/L) = 10⁴ and prints the angle between the (end-to-end) direction and the SVM direction.

Start: the least-squares direction does not separate these data, so W₀ points along the unit
vector on the segment from the least-squares direction to the SVM direction closest to the former
whose normalized margin is γ/2, scaled so that the smallest margin is ln n + 1 (L(W₀) < ℓ(0)).
The deep linear start is balanced along that direction plus 10% noise.

Solver: Kvaerno5 with a matrix-free Newton–GMRES root finder whose termination is *relative*
(:class:`RelativeNewton`): a Newton solve has converged when its last update is within the Newton
tolerances (atol + rtol·|f|), and it fails only on non-finite values or after
``root_find_max_steps``. optimistix's own tests reject most steps here, for two reasons measured on
this problem: the Cauchy test asks the residual to be below ``atol`` *absolutely* (residuals of
size |f|·ε·‖hJ‖ never get there at large steps), and the κ-rate test (``cauchy_termination=False``)
calls a solve "diverged" when two successive updates are both already at round-off level but the
second is larger (rate > 2), which happens more often the *smaller* the step, so the step size
collapses. Step control: a PI controller (pcoeff 0.3, icoeff 0.4, safety 0.8).

The direction W(t) along the run is recovered from the saved raw margins p_i = y_i⟨x_i, w⟩
(least squares on the 3 columns of y·x), for the deep network w = A₃A₂A₁.

Writes ``benchmarks/results/reach.json``.

    python benchmarks/reach.py            # all four runs plus the default-solver baseline
    python benchmarks/reach.py --no-baseline
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

import gradflow
from gradflow.controllers import IMPLICIT_CONTROLLER
from gradflow.solvers import RelativeNewton

warnings.filterwarnings("ignore", message=".*Assumption 2.3.*")

TARGET = 1e4
RTOL, ATOL = 1e-6, 1e-9
CONTROLLER = IMPLICIT_CONTROLLER  # the library's PI controller for implicit solvers
MAX_REJECTED = 0.20
MAX_WALL = 60.0


# ------------------------------------------------------------------------------------- solver


def implicit_solver(kind: str = "kvaerno5", *, rtol: float = RTOL, atol: float = ATOL, newton_factor: float = 1.0,
                    gmres_restart: int = 20, gmres_max_steps: int = 200, root_find_max_steps: int = 10):
    """The recommended matrix-free ESDIRK configuration (exact constructor arguments)."""
    cls = {"kvaerno3": diffrax.Kvaerno3, "kvaerno4": diffrax.Kvaerno4, "kvaerno5": diffrax.Kvaerno5}[kind]
    root_finder = RelativeNewton(
        rtol=newton_factor * rtol,
        atol=newton_factor * atol,
        cauchy_termination=False,  # the state then carries no residual; terminate() is ours anyway
        linear_solver=lx.GMRES(rtol=rtol, atol=atol, max_steps=gmres_max_steps, restart=gmres_restart),
    )
    return cls(root_finder=root_finder, root_find_max_steps=root_find_max_steps)


# --------------------------------------------------------------------------------------- data


def svm_direction(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Hard-margin SVM direction through the origin: gradflow.maxmargin if present, else an LP-free
    dual projected-gradient fallback."""
    try:
        from gradflow.maxmargin import svm_direction as _svm

        r = _svm(x, y)
        return np.asarray(r.direction, dtype=np.float64), float(r.margin)
    except ImportError:
        pass
    from scipy.optimize import nnls

    # least-distance program min ½‖u‖² s.t. (y x) u ≥ 1 via Lawson–Hanson: nnls on [G^T; 1^T].
    g = y[:, None] * x
    e = np.concatenate([g.T, np.ones((1, len(y)))], axis=0)
    f = np.concatenate([np.zeros(x.shape[1]), [1.0]])
    lam, _ = nnls(e, f, maxiter=10_000)
    r = e @ lam - f
    u = -r[:-1] / r[-1]
    u = u / np.linalg.norm(u)
    return u, float(np.min(g @ u))


def start_direction(x, y, svm_dir, gamma, frac=0.5) -> np.ndarray:
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    w = w / np.linalg.norm(w)
    for lam in np.linspace(0.0, 1.0, 1001):
        v = (1 - lam) * w + lam * svm_dir
        v = v / np.linalg.norm(v)
        if np.min(y * (x @ v)) >= frac * gamma:
            return v
    return svm_dir


def _log_loss(p: np.ndarray, loss: str) -> float:
    z = -p if loss == "exponential" else np.log(np.log1p(np.exp(-p)))
    return float(np.log(np.sum(np.exp(z - z.max()))) + z.max())


def make_models(x, y, v, loss):
    n = len(y)
    p = y * (x @ v)
    ell0 = 1.0 if loss == "exponential" else math.log(2.0)
    scale = (math.log(n) + 1.0) / p.min()
    while _log_loss(scale * p, loss) >= math.log(ell0) - 0.5:
        scale *= 1.5
    with gradflow.x64():
        lin = gradflow.Linear(3, key=jax.random.key(0))
        lin = eqx.tree_at(lambda m: m.w, lin, jnp.asarray(scale * v))
        deep = gradflow.DeepLinear(3, (3, 4, 4), key=jax.random.key(1))
        rng = np.random.default_rng(0)
        u1 = rng.standard_normal(4)
        u1 /= np.linalg.norm(u1)
        u2 = rng.standard_normal(4)
        u2 /= np.linalg.norm(u2)
        c = 1.0
        for _ in range(60):  # balanced layers c(u1 vᵀ), c(u2 u1ᵀ), c u2ᵀ plus 10% noise; grow c until L < ℓ(0)
            a1 = c * (np.outer(u1, v) + 0.1 * rng.standard_normal((4, 3)) / 3)
            a2 = c * (np.outer(u2, u1) + 0.1 * rng.standard_normal((4, 4)) / 4)
            a3 = c * (u2[None, :] + 0.1 * rng.standard_normal((1, 4)) / 4)
            prod = (a3 @ a2 @ a1)[0]
            pp = y * (x @ prod)
            if pp.min() > 0 and _log_loss(pp, loss) < math.log(ell0) - 0.5:
                break
            c *= 1.25
        deep = eqx.tree_at(lambda m: m.layers, deep, tuple(jnp.asarray(a) for a in (a1, a2, a3)))
    return {"linear": lin, "deep_linear": deep}


# ---------------------------------------------------------------------------------------- run


def directions_from_margins(raw_margins: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """w(t) from p_i(t) = y_i⟨x_i, w(t)⟩ by least squares (x has full column rank)."""
    g = y[:, None] * x
    w = np.linalg.lstsq(g, raw_margins.T, rcond=None)[0].T
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def run_one(model, x, y, loss, solver, svm_dir, *, controller=CONTROLLER, save_at=None, max_steps=20_000):
    t0 = time.perf_counter()
    r = gradflow.simulate_flow(
        model, (x, y), loss=loss, clock="accuracy", until_accuracy=TARGET, solver=solver, rtol=RTOL, atol=ATOL,
        max_steps=max_steps, save_at=save_at, controller_options=dict(controller),
    )
    wall = time.perf_counter() - t0  # includes compilation: the number a user waits
    t1 = time.perf_counter()  # the same call again hits the compilation cache: solve time only
    gradflow.simulate_flow(
        model, (x, y), loss=loss, clock="accuracy", until_accuracy=TARGET, solver=solver, rtol=RTOL, atol=ATOL,
        max_steps=max_steps, save_at=save_at, controller_options=dict(controller),
    )
    warm = time.perf_counter() - t1
    d = r.diagnostics
    dirs = directions_from_margins(np.asarray(d["raw_margins"]), x, y)
    angle = np.arccos(np.clip(dirs @ svm_dir, -1.0, 1.0))
    if hasattr(r.model, "product"):
        with gradflow.x64():
            prod = np.asarray(r.model.product())
    else:
        prod = np.concatenate([np.ravel(v) for v in r.params.values()])
    final_angle = float(np.arccos(np.clip(prod @ svm_dir / np.linalg.norm(prod), -1, 1)))
    keys = ("log_loss", "accuracy", "alpha", "norm", "grad_norm", "log_t", "path_length", "raw_margins", "angle")
    # ln t = −inf at the start (t = 0) by definition; every later save point must be finite.
    finite = {k: bool(np.all(np.isfinite(np.asarray(d[k])[1:] if k == "log_t" else np.asarray(d[k])))) for k in keys if k in d}
    finite["grad_norm_positive"] = bool(np.all(np.asarray(d["grad_norm"]) > 0))
    finite["params"] = all(bool(np.all(np.isfinite(v))) for v in r.params.values())
    st = r.stats
    return dict(
        status=r.status, reason=r.reason, steps=st["steps"], accepted=st["accepted_steps"], rejected=st["rejected_steps"],
        rejected_fraction=st["rejected_steps"] / max(st["steps"], 1), wall_incl_compile=wall, wall_warm=warm,
        final_accuracy=float(d["accuracy"][-1]), final_log_t=float(d["log_t"][-1]), final_norm=float(d["norm"][-1]),
        finite=finite, all_finite=all(finite.values()),
        accuracy_curve=[float(a) for a in d["accuracy"]], angle_curve=[float(a) for a in angle],
        final_angle_product=final_angle,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-baseline", action="store_true", help="skip the gradflow default-solver comparison")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "reach.json"))
    args = ap.parse_args(argv)

    x, y = gradflow.datasets.iris_binary()
    svm_dir, gamma = svm_direction(x, y)
    v = start_direction(x, y, svm_dir, gamma)
    print(f"iris setosa/versicolor: n={len(y)}, SVM margin γ={gamma:.4g}, start angle to SVM {np.degrees(np.arccos(v @ svm_dir)):.2f}°")
    levels = np.array([10, 15, 20, 30, 50, 100, 300, 1000, 3000, TARGET])
    solver = implicit_solver()
    config = dict(
        solver="diffrax.Kvaerno5(root_finder=RelativeNewton(rtol=1e-6, atol=1e-9, cauchy_termination=False, "
        "linear_solver=lineax.GMRES(rtol=1e-6, atol=1e-9, max_steps=200, restart=20)), root_find_max_steps=10)",
        controller=dict(rtol=RTOL, atol=ATOL, **CONTROLLER), target=TARGET, clock="accuracy",
    )
    out = dict(config=config, svm_margin=gamma, svm_direction=svm_dir.tolist(), runs={}, baseline={})
    ok = True
    for loss in ("exponential", "logistic"):
        models = make_models(x, y, v, loss)
        for name, model in models.items():
            save = None
            res = run_one(model, x, y, loss, solver, svm_dir, save_at=save)
            key = f"{name}/{loss}"
            out["runs"][key] = res
            passed = (res["status"] == "completed" and res["rejected_fraction"] <= MAX_REJECTED
                      and res["wall_incl_compile"] < MAX_WALL and res["all_finite"])
            ok &= passed
            print(f"\n{key}: {res['status']}, {res['steps']} steps, {res['rejected']} rejected "
                  f"({100 * res['rejected_fraction']:.1f}%), wall {res['wall_incl_compile']:.1f} s incl. compile ({res['wall_warm']:.2f} s warm), "
                  f"ln(n/L)={res['final_accuracy']:.6g}, ln t={res['final_log_t']:.5g}, ‖W‖={res['final_norm']:.4g}, "
                  f"all finite: {res['all_finite']}  {'PASS' if passed else 'FAIL'}")
            acc = np.asarray(res["accuracy_curve"])
            ang = np.asarray(res["angle_curve"])
            print("   ln(n/L)   angle to SVM (rad)")
            for lv in levels[levels >= acc[0]]:
                i = int(np.argmin(np.abs(acc - lv)))
                print(f"   {acc[i]:9.4g}   {ang[i]:.3e}")
            print(f"   final end-to-end angle {res['final_angle_product']:.3e} rad")
    if not args.no_baseline:
        print("\nbaseline: gradflow's default 'kvaerno5' (optimistix Newton, Cauchy test at 10x tolerances), PID defaults")
        models = make_models(x, y, v, "exponential")
        res = run_one(models["linear"], x, y, "exponential", "kvaerno5", svm_dir, controller={}, max_steps=5000)
        res = {k: res[k] for k in ("status", "reason", "steps", "rejected", "rejected_fraction", "wall_incl_compile", "final_accuracy")}
        out["baseline"]["linear/exponential/default_kvaerno5"] = res
        print(f"   linear/exponential: {res['status']} ({res['reason']}), {res['steps']} steps, {res['rejected']} rejected "
              f"({100 * res['rejected_fraction']:.0f}%), reached ln(n/L)={res['final_accuracy']:.4g}, {res['wall_incl_compile']:.1f} s")
    out["all_passed"] = bool(ok)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"\nall runs meet ≤{100 * MAX_REJECTED:.0f}% rejected, <{MAX_WALL:.0f} s, finite: {ok}.  wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
