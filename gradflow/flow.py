r"""Continuous-time gradient flow dW/dt = −∇L(W) (eq. 2.2), integrated with diffrax.

Two clocks parametrise the same path:

* ``clock="time"``: physical time t. dW/dt = −∇L = |ℓ'(α)| ∇α (Lemma C.2).
* ``clock="accuracy"``: the smoothed margin α = ℓ⁻¹(L) itself. Along the flow
  dα/dt = ⟨∇α, dW/dt⟩ = |ℓ'(α)| ‖∇α‖², hence for *every* loss

      dW/dα = ∇α / ‖∇α‖².

  For the exponential loss α = ln(1/L); for the logistic loss and cross-entropy α is a monotone
  function of L with ln(1/L) = −ln ℓ(α), so a target ln(n/L) = K maps to α* = ℓ⁻¹(n e^(−K)).
  Physical time, which overflows long before ln(1/L) = 10⁴, is carried as u = t e^(−α):

      du/dα = e^(−α) dt/dα − u = e^(−α − ln|ℓ'(α)|) / ‖∇α‖² − u,   ln t = α + ln u.

The path length ζ of W/‖W‖ is part of the ODE state (Lemma 3.4):
dζ/dt = ‖∂_⊥L‖/‖W‖ = |ℓ'(α)| ‖∂_⊥α‖/‖W‖, i.e. dζ/dα = ‖∂_⊥α‖/(‖W‖ ‖∇α‖²).

State: ``(W, aux)`` with aux = [ζ, u] (u unused in the time clock). Diagnostics are evaluated inside
the compiled solve at the save points through ``diffrax.SubSaveAt(fn=...)``.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from .data import as_dataset
from .diagnostics import diagnostics, evaluate
from .errors import InvalidTypeError, SolverFailure, bad_argument
from .losses import get_loss
from .params import combine, partition
from .precision import warn_if_float32, x64
from .result import FlowResult, params_to_dict
from .solvers import evaluations_per_step, get_solver

__all__ = ["simulate_flow", "CLOCKS"]

CLOCKS = ("time", "accuracy")


def _time_field(t, state, args):
    params, aux = state
    static, x, y, loss = args
    pt = evaluate(params, static, x, y, loss)
    speed = jnp.exp(pt.log_neg_dloss)
    dparams = jax.tree_util.tree_map(lambda g: speed * g, pt.grad_alpha)
    dzeta = speed * pt.perp_norm / pt.norm
    return dparams, jnp.stack([dzeta, jnp.zeros_like(dzeta)])


def _accuracy_field(alpha, state, args):
    params, aux = state
    static, x, y, loss = args
    pt = evaluate(params, static, x, y, loss)
    inv_sq = 1.0 / pt.grad_norm**2
    dparams = jax.tree_util.tree_map(lambda g: inv_sq * g, pt.grad_alpha)
    dzeta = pt.perp_norm * inv_sq / pt.norm
    du = jnp.exp(-pt.alpha - pt.log_neg_dloss) * inv_sq - aux[1]
    return dparams, jnp.stack([dzeta, du])


def _make_save_fn(clock: str, degree, save_params: bool):
    def save_fn(s, state, args):
        params, aux = state
        static, x, y, loss = args
        pt = evaluate(params, static, x, y, loss)
        out = diagnostics(pt, params, y, loss, degree)
        out["path_length"] = aux[0]
        if clock == "time":
            out["log_t"] = jnp.log(s)
        else:
            out["log_t"] = s + jnp.log(aux[1])
        out["t"] = jnp.exp(out["log_t"])
        if save_params:
            out["params_flat"] = jax.flatten_util.ravel_pytree(params)[0]
        return out

    return save_fn


@eqx.filter_jit
def _solve(params0, aux0, s0, static, x, y, save_points, t_end, target_log_loss, log_t_max, rtol, atol, dt0, *, loss, degree, clock, solver, max_steps, event_kind, controller_opts, save_params):
    args = (static, x, y, loss)
    n = x.shape[0]
    if clock == "time":
        term = diffrax.ODETerm(_time_field)
        s1 = t_end
        ts = save_points
    else:
        term = diffrax.ODETerm(_accuracy_field)
        # save points and target are given in ln(n/L); map them to α = ℓ⁻¹(n e^(−K)).
        s1 = loss.alpha_from_log_loss(jnp.log(n) - t_end)
        ts = jnp.clip(loss.alpha_from_log_loss(jnp.log(n) - save_points), s0, s1)
    save_fn = _make_save_fn(clock, degree, save_params)
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts, fn=save_fn),
            diffrax.SubSaveAt(t1=True, fn=save_fn),
            diffrax.SubSaveAt(t1=True),
        ]
    )
    if event_kind == "log_loss":

        def cond(s, state, args, **kwargs):
            params, _ = state
            static_, x_, y_, loss_ = args
            return loss_.log_loss(combine(params, static_)(x_), y_) <= target_log_loss

        event = diffrax.Event(cond)
    elif event_kind == "log_t":

        def cond(s, state, args, **kwargs):
            return s + jnp.log(state[1][1]) >= log_t_max

        event = diffrax.Event(cond)
    else:
        event = None
    controller = diffrax.PIDController(rtol=rtol, atol=atol, **dict(controller_opts))
    y0 = (params0, aux0)
    sol = diffrax.diffeqsolve(
        term,
        solver,
        s0,
        s1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=controller,
        event=event,
        max_steps=max_steps,
        throw=False,
    )
    saved, final_diag, final_state = sol.ys
    final_state = jax.tree_util.tree_map(lambda v: v[0], final_state)
    return saved, final_diag, final_state, sol.result, sol.stats, sol.ts[1]


def _check_positive_finite(name: str, value, *, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidTypeError(f"{name}: expected a positive number, got {type(value).__name__}. Pass e.g. {name}=1e6.")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise bad_argument(name, f"must be positive and finite, got {value}", f"Pass a positive finite {name}.")
    return value


def _default_save_points(clock: str, t_end: float, acc0: float, num: int) -> np.ndarray:
    if clock == "time":
        # geometric in t: the flow slows down like log t.
        start = min(1e-3, t_end / 10)
        return np.concatenate([[0.0], np.geomspace(start, t_end, num - 1)])
    span = t_end - acc0
    return acc0 + span * np.concatenate([[0.0], np.geomspace(1e-3, 1.0, num - 1)])


def simulate_flow(
    model,
    data,
    t_max: float | None = None,
    *,
    loss: str = "exponential",
    clock: str = "time",
    until_accuracy: float | None = None,
    solver: Any = "tsit5",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    dt0: float | None = None,
    max_steps: int = 100_000,
    save_at: Any = None,
    num_save: int = 100,
    jacobian: str = "matrix_free",
    dtype: str = "float64",
    check_degree: bool = True,
    throw: bool = False,
    controller_options: dict | None = None,
    save_params: bool = False,
    auto_explicit_steps: int = 1000,
) -> FlowResult:
    r"""Integrate the gradient flow dW/dt = −∇L(W) of ``model`` on ``data``.

    Args:
      model: a gradflow model (an equinox Module with ``degree``); its trainable float arrays are W.
      data: a :class:`gradflow.Dataset` or an ``(x, y)`` tuple. Binary losses need y ∈ {−1, +1};
        ``loss='cross_entropy'`` needs integer classes and (n, C) outputs.
      t_max: final physical time (``clock='time'``; may be as large as float64 allows). With
        ``clock='accuracy'`` an optional extra stop when t reaches it.
      loss: 'exponential', 'logistic' or 'cross_entropy'. L(W) = Σ_i ℓ(p_i(W)).
      clock: 'time' (integrate in t) or 'accuracy' (integrate in α; needs ``until_accuracy``).
      until_accuracy: stop when ln(n/L) reaches this value (a diffrax event in the time clock,
        the end point in the accuracy clock).
      solver: 'auto' (Tsit5, switching once to matrix-free Kvaerno5 when the flow turns stiff;
        see ``_run_auto``), a name ('tsit5', 'dopri5', 'dopri8', 'bosh3', 'heun', 'kvaerno3/4/5',
        'implicit_euler') or a diffrax solver instance.
      rtol, atol: tolerances of the PID step-size controller.
      dt0: initial step (None: diffrax picks it).
      max_steps: the most solver steps before the run stops with status 'failed'.
      save_at: increasing save points (times t, or ln(n/L) values in the accuracy clock). Default
        ``num_save`` points, geometric in t (or in ln(n/L) − ln(n/L₀)).
      jacobian: 'matrix_free' (Newton–GMRES on Hessian-vector products) or 'dense' for implicit
        solvers.
      dtype: 'float64' (default). 'float32' runs but warns.
      check_degree: measure the degree numerically and refuse a model whose declared degree
        disagrees.
      throw: raise :class:`gradflow.SolverFailure` (holding the partial result) instead of
        returning a failed result.
      controller_options: extra keyword arguments of ``diffrax.PIDController``.
      auto_explicit_steps: with ``solver='auto'``, the explicit steps per segment between
        stiffness checks.
      save_params: also store W at every save point, flattened, as ``diagnostics["params_flat"]``
        with shape (T, k) (memory T·k).

    Returns:
      A :class:`gradflow.FlowResult` with the diagnostics at every save point reached, the final
      model, solver statistics and a status ('completed', 'stopped at target', 'failed').
    """
    # ---- validation: everything below runs before any compile ----
    data = as_dataset(data)
    loss_fn = get_loss(loss)
    if clock not in CLOCKS:
        raise bad_argument("clock", f"unknown clock {clock!r}", f"Use one of {CLOCKS}.")
    if clock == "time":
        if t_max is None:
            raise bad_argument("t_max", "is required with clock='time'", "Pass t_max=1e6, or use clock='accuracy' with until_accuracy=K.")
        t_max = _check_positive_finite("t_max", t_max)
    else:
        t_max = _check_positive_finite("t_max", t_max, allow_none=True)
        if until_accuracy is None:
            raise bad_argument("until_accuracy", "is required with clock='accuracy'", "Pass until_accuracy=K, the target ln(n/L).")
    until_accuracy = _check_positive_finite("until_accuracy", until_accuracy, allow_none=True)
    rtol = _check_positive_finite("rtol", rtol)
    atol = _check_positive_finite("atol", atol)
    dt0 = _check_positive_finite("dt0", dt0, allow_none=True)
    if not isinstance(max_steps, (int, np.integer)) or isinstance(max_steps, bool) or max_steps < 1:
        raise bad_argument("max_steps", f"must be a positive integer, got {max_steps!r}", "Pass e.g. max_steps=100_000.")
    if dtype not in ("float64", "float32"):
        raise bad_argument("dtype", f"unknown dtype {dtype!r}", "Use 'float64' (default) or 'float32'.")
    if dtype == "float32":
        warn_if_float32(jnp.float32, "simulate_flow")
    auto = isinstance(solver, str) and solver.lower() == "auto"
    solver_obj = get_solver("tsit5" if auto else solver, rtol=rtol, atol=atol, jacobian=jacobian)
    degree = getattr(model, "degree", "missing")
    if degree == "missing":
        raise InvalidTypeError(
            f"model: {type(model).__name__} has no 'degree' attribute. Use a gradflow model or give your "
            "equinox Module a `degree` property (an int, or None if not homogeneous)."
        )

    # float32 runs with x64 off altogether, so no Python constant promotes part of the state.
    with x64() if dtype == "float64" else jax.enable_x64(False):
        fdtype = jnp.float64 if dtype == "float64" else jnp.float32
        params0, static = partition(model)
        leaves = jax.tree_util.tree_leaves(params0)
        if not leaves:
            raise bad_argument("model", "has no trainable floating-point parameters", "Pass a model with float arrays.")
        params0 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, fdtype), params0)
        if not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(params0)):
            raise bad_argument("model", "initial parameters contain NaN or inf", "Initialise the model with finite values.")
        x = jnp.asarray(data.x, fdtype)
        model_cast = combine(params0, static)
        try:
            outputs = jax.eval_shape(model_cast, x[:1])
        except Exception as e:
            raise bad_argument("model", f"cannot be applied to data.x of shape {data.x.shape} ({type(e).__name__}: {e})", "Make the model's input size match the data.") from e
        if loss_fn.multiclass:
            if len(outputs.shape) != 2 or outputs.shape[1] < 2:
                raise bad_argument("loss", f"'{loss_fn.name}' needs (n, classes) outputs; the model gives shape {outputs.shape}", "Use a binary loss ('exponential'/'logistic') with ±1 labels, or a multiclass model.")
            y = jnp.asarray(data.class_labels(outputs.shape[1]))
        else:
            if len(outputs.shape) != 1:
                raise bad_argument("loss", f"'{loss_fn.name}' is binary but the model gives outputs of shape {outputs.shape}", "Use loss='cross_entropy' with integer class labels, or a scalar-output model.")
            y = jnp.asarray(data.binary_labels(), fdtype)
        if check_degree:
            _check_declared_degree(model_cast, data.x[: min(data.n, 16)], degree)

        n = data.n
        log_loss0 = float(loss_fn.log_loss(model_cast(x), y))
        acc0 = math.log(n) - log_loss0
        if log_loss0 >= math.log(loss_fn.ell_zero):
            warnings.warn(
                f"L(W_0) = e^{log_loss0:.4g} >= ℓ(0) = {loss_fn.ell_zero:.4g}: Assumption 2.3 of the paper is unmet, "
                "so its guarantees (α̃ nondecreasing, directional convergence, Lemma C.5) only apply once the "
                "flow has brought L below ℓ(0), if ever. Scale up the initialisation or start from a later W.",
                stacklevel=2,
            )
        if clock == "accuracy" and until_accuracy <= acc0:
            raise bad_argument("until_accuracy", f"= {until_accuracy} is not above the initial ln(n/L) = {acc0:.6g}", "Pass a larger target.")
        t_end = t_max if clock == "time" else until_accuracy
        if save_at is None:
            save_points = _default_save_points(clock, t_end, acc0, num_save)
        else:
            save_points = np.asarray(save_at, dtype=np.float64)
            if save_points.ndim != 1 or save_points.size == 0 or not np.all(np.isfinite(save_points)):
                raise bad_argument("save_at", "must be a nonempty 1-D array of finite numbers", "Pass e.g. numpy.geomspace(1, t_max, 50).")
            if np.any(np.diff(save_points) <= 0):
                raise bad_argument("save_at", "is not strictly increasing", "Sort the save points and drop duplicates.")
            lo = 0.0 if clock == "time" else acc0
            if save_points[0] < lo or save_points[-1] > t_end:
                raise bad_argument("save_at", f"has points outside [{lo:.6g}, {t_end:.6g}]", "Keep save points inside the integration range.")

        if clock == "time" and until_accuracy is not None:
            event_kind = "log_loss"
        elif clock == "accuracy" and t_max is not None:
            event_kind = "log_t"
        else:
            event_kind = None
        target_log_loss = math.log(n) - until_accuracy if until_accuracy is not None else -math.inf
        log_t_max = math.log(t_max) if t_max is not None else math.inf
        opts = {} if controller_options is None else dict(controller_options)
        f = lambda v: jnp.asarray(v, fdtype)  # noqa: E731  dynamic scalars: no recompiles
        common = dict(
            static=static, x=x, y=y, t_end=f(t_end), target_log_loss=f(target_log_loss), log_t_max=f(log_t_max),
            rtol=f(rtol), atol=f(atol), dt0=None if dt0 is None else f(dt0), loss=loss_fn, degree=degree, clock=clock,
            event_kind=event_kind, controller_opts=tuple(sorted(opts.items())), save_params=bool(save_params),
        )
        s_start = 0.0 if clock == "time" else float(loss_fn.alpha_from_log_loss(jnp.asarray(log_loss0, fdtype)))
        config = dict(
            loss=loss_fn.name, clock=clock, solver=solver if isinstance(solver, str) else type(solver_obj).__name__,
            rtol=rtol, atol=atol, t_max=t_max, until_accuracy=until_accuracy, degree=degree, n=n,
            max_steps=int(max_steps), jacobian=jacobian, dtype=dtype,
        )
        if auto:
            segments = _run_auto(params0, s_start, save_points, common, rtol=rtol, atol=atol, jacobian=jacobian,
                                 max_steps=int(max_steps), explicit_steps=int(auto_explicit_steps), f=f)
            config["switches"] = [seg["solver_name"] + f"@ln(n/L)={seg['start_accuracy']:.6g}" for seg in segments]
        else:
            segments = [_run_segment(params0, jnp.zeros((2,), fdtype), f(s_start), save_points, common,
                                     solver_obj, int(max_steps), f)]
        return _assemble(segments, static, degree, config=config, throw=throw, event_kind=event_kind)


def _run_segment(params0, aux0, s0, save_points, common, solver, max_steps, f) -> dict:
    """One diffeqsolve from (params0, aux0) at clock value s0; outputs as numpy, timed."""
    start = time.perf_counter()
    saved, final_diag, final_state, result, stats, s_final = _solve(
        params0, aux0, s0, save_points=f(save_points), solver=solver, max_steps=max_steps, **common
    )
    jax.block_until_ready(final_state)
    wall = time.perf_counter() - start
    saved = jax.tree_util.tree_map(np.asarray, saved)
    final_diag = jax.tree_util.tree_map(lambda v: np.asarray(v)[0], final_diag)  # SubSaveAt(t1) has a length-1 axis
    # diffrax fills save points after a stop with inf; keep the ones reached.
    reached = np.isfinite(saved["log_loss"])
    return dict(
        saved={k: v[reached] for k, v in saved.items()}, final_diag=final_diag, final_state=final_state,
        result=result, stats={k: int(v) for k, v in stats.items() if k != "max_steps"}, wall=wall,
        s_final=float(np.asarray(s_final).reshape(-1)[0]), solver=solver, solver_name=type(solver).__name__,
        num_save=len(save_points), start_accuracy=None,
    )


def _top_eigenvalue(params, aux, s, common, iters: int = 30) -> float:
    """|λ_max| of the Jacobian of the vector field w.r.t. W (power iteration on Jacobian-vector
    products; in physical time these are Hessian-vector products of L)."""
    field = _time_field if common["clock"] == "time" else _accuracy_field
    args = (common["static"], common["x"], common["y"], common["loss"])
    return float(_power_iteration(field, params, aux, s, args, iters))


@eqx.filter_jit
def _power_iteration(field, params, aux, s, args, iters):
    def jv(v):
        return jax.jvp(lambda p: field(s, (p, aux), args)[0], (params,), (v,))[1]

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v0 = unravel(jnp.cos(jnp.arange(flat.size, dtype=flat.dtype) * 1.3) + 0.5)

    def body(_, carry):
        v, _lam = carry
        w = jv(v)
        norm_w = jax.flatten_util.ravel_pytree(w)[0]
        lam = jnp.linalg.norm(norm_w) / jnp.linalg.norm(jax.flatten_util.ravel_pytree(v)[0])
        return jax.tree_util.tree_map(lambda a: a / jnp.linalg.norm(norm_w), w), lam

    return jax.lax.fori_loop(0, iters, body, (v0, jnp.zeros((), flat.dtype)))[1]


def _run_auto(params0, s_start, save_points, common, *, rtol, atol, jacobian, max_steps, explicit_steps, f) -> list[dict]:
    """LSODA-style switching: Tsit5 in segments of ``explicit_steps`` steps while the flow is not
    stiff; once a segment runs out of steps *and* its mean step h sits at the explicit stability
    limit (h·|λ_max| > 1, λ_max of the vector field's Jacobian by power iteration), the rest of the
    flow is integrated with matrix-free Kvaerno5. The switch is one-way: in this problem class
    stiffness grows with ln(n/L) (the dual weights separate as the margin sharpens)."""
    explicit = get_solver("tsit5", rtol=rtol, atol=atol)
    segments: list[dict] = []
    params, aux, s = params0, jnp.zeros((2,), common["x"].dtype), s_start
    points = np.asarray(save_points)
    used = 0
    solver, budget = explicit, min(explicit_steps, max_steps)
    while True:
        seg = _run_segment(params, aux, f(s), points, common, solver, budget, f)
        seg["start_accuracy"] = float(seg["saved"]["accuracy"][0]) if len(seg["saved"]["accuracy"]) else float("nan")
        segments.append(seg)
        used += seg["stats"]["num_steps"]
        out_of_steps = seg["result"] == diffrax.RESULTS.max_steps_reached
        if not out_of_steps or used >= max_steps or solver is not explicit:
            return segments
        params, aux = seg["final_state"]
        h = (seg["s_final"] - s) / max(seg["stats"]["num_accepted_steps"], 1)
        s = seg["s_final"]
        position = seg["final_diag"]["t"] if common["clock"] == "time" else seg["final_diag"]["accuracy"]
        points = points[points > position]
        if points.size == 0:
            points = np.asarray([float(common["t_end"])])
        lam = _top_eigenvalue(params, aux, f(s), common)
        if h * lam > 1.0:
            solver = get_solver("kvaerno5", rtol=rtol, atol=atol, jacobian=jacobian)
            budget = max_steps - used
            seg["switch_reason"] = f"stiff: mean step {h:.3g} × |λ_max| {lam:.3g} > 1"


def _check_declared_degree(model, x, degree):
    from .models.homogeneity import check_homogeneity

    report = check_homogeneity(model, np.asarray(x))
    if degree is not None and report.degree != degree:
        raise bad_argument(
            "model",
            f"declares degree {degree} but Φ(x; cW) = c^L Φ(x; W) holds numerically for L = {report.degree} "
            f"(estimate {report.estimate:.4g})",
            "Fix the model's `degree` (None if it is not homogeneous), or pass check_degree=False.",
        )


def _assemble(segments, static, degree, *, config, throw, event_kind):
    """Concatenate the segments' save points (+ the final state if it is not a save point) into a
    FlowResult with a status and reason."""
    parts = [seg["saved"] for seg in segments]
    diag = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    last, final_diag = segments[-1], segments[-1]["final_diag"]
    last_log_t = diag["log_t"][-1] if len(diag["log_t"]) else -np.inf
    if not np.isclose(final_diag["log_t"], last_log_t, rtol=1e-12, atol=0) and np.isfinite(final_diag["log_loss"]):
        diag = {k: np.concatenate([diag[k], final_diag[k][None]]) for k in diag}
    if degree is None:
        for k in ("smoothed_margin", "beta", "margin", "margins", "potential"):
            diag.pop(k, None)
    result = last["result"]
    if result == diffrax.RESULTS.successful:
        status, reason = "completed", ""
    elif result == diffrax.RESULTS.event_occurred:
        status, reason = "stopped at target", "until_accuracy reached" if event_kind == "log_loss" else "t_max reached"
    else:
        status, reason = "failed", diffrax.RESULTS[result]
    params_final, _aux = last["final_state"]
    if not all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(params_final)):
        status, reason = "failed", "non-finite parameters (NaN/inf) in the state; " + reason
    evals = [evaluations_per_step(seg["solver"]) for seg in segments]
    stats_out = {
        "steps": sum(seg["stats"]["num_steps"] for seg in segments),
        "accepted_steps": sum(seg["stats"]["num_accepted_steps"] for seg in segments),
        "rejected_steps": sum(seg["stats"]["num_rejected_steps"] for seg in segments),
        # explicit RK: stages per attempted step + 2 for the initial step size; implicit: unknown here
        "gradient_evaluations": None if None in evals else sum(
            seg["stats"]["num_steps"] * e + 2 for seg, e in zip(segments, evals, strict=True)),
        "diagnostic_evaluations": sum(seg["num_save"] + 1 for seg in segments),
        "wall_time": sum(seg["wall"] for seg in segments),
        "segments": len(segments),
    }
    res = FlowResult(
        diagnostics=diag, status=status, reason=reason, stats=stats_out, config=config,
        params=params_to_dict(params_final), model=combine(params_final, static),
    )
    _warn_if_stalled(diag, config)
    if status == "failed" and throw:
        raise SolverFailure(f"simulate_flow failed: {reason}", res)
    return res


def _warn_if_stalled(diag: dict, config: dict) -> None:
    """Warn when the loss stalls above ℓ(0) with misclassified points: data not separable by the model.

    If some p_i ≤ 0 then L ≥ ℓ(p_i) ≥ ℓ(0), so a flow that keeps training error above zero can
    never enter the regime of Assumption 2.3."""
    log_loss = diag["log_loss"]
    if len(log_loss) < 8 or diag["train_error"][-1] == 0:
        return
    quarter = len(log_loss) // 4
    drop = log_loss[-quarter - 1] - log_loss[-1]
    if drop < 1e-3 * max(1.0, abs(log_loss[-1])):
        warnings.warn(
            f"The loss stalls at ln L = {log_loss[-1]:.6g} with {diag['train_error'][-1]:.1%} of the examples "
            "misclassified: the data do not look separable by this model, so L cannot go below ℓ(0) and the "
            "paper's late-training regime is never reached. Use a more expressive model or separable data.",
            stacklevel=3,
        )
