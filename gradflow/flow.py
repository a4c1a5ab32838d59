r"""Continuous-time gradient flow dW/dt = −∇L(W) (eq. 2.2), integrated with diffrax.

Two clocks parametrise the same path:

* ``clock="time"``: physical time t. dW/dt = −∇L = |ℓ'(α)| ∇α (Lemma C.2).
* ``clock="accuracy"``: the smoothed margin α = ℓ⁻¹(L) itself. Along the flow
  dα/dt = ⟨∇α, dW/dt⟩ = |ℓ'(α)| ‖∇α‖², hence for *every* loss

      dW/dα = ∇α / ‖∇α‖².

  For the exponential loss α = ln(1/L); for the logistic loss and cross-entropy α is a monotone
  function of L with ln(1/L) = −ln ℓ(α), so a target ln(n/L) = K maps to α* = ℓ⁻¹(n e^(−K)).
  Physical time, which overflows long before ln(1/L) = 10⁴, is carried as u = t e^(−σ(α)) with
  σ(α) = ln(1 + e^α) (softplus: σ(α) = α to float64 precision for α ≥ 37, σ → 0 for α → −∞):

      du/dα = e^(−σ) dt/dα − σ'(α) u = e^(−σ(α) − ln|ℓ'(α)|) / ‖∇α‖² − sigmoid(α) u,   ln t = σ(α) + ln u.

  Why σ(α) and not α (issue 14): from a start with L ≫ ℓ(0) the logistic loss has α ≈ −L
  (ln L(W₀) = 5.5 gives α₀ = −251), so u = t e^(−α) grew at du/dα ≈ 6e103 from u = 0. Scaled by
  atol, that made the first step 2e-105, far below the spacing of float64 numbers at α₀ (3e-14):
  α + h rounded to α, every step was "accepted" with zero length, and the run spent max_steps at
  its start. With σ(α), u ≈ t while α < 0 and u = t e^(−α) once α ≫ 0, as before.

The path length ζ of W/‖W‖ is part of the ODE state (Lemma 3.4):
dζ/dt = ‖∂_⊥L‖/‖W‖ = |ℓ'(α)| ‖∂_⊥α‖/‖W‖, i.e. dζ/dα = ‖∂_⊥α‖/(‖W‖ ‖∇α‖²).

State: ``(W, aux)`` with aux = [ζ, u] (u unused in the time clock). Diagnostics are evaluated inside
the compiled solve at the save points through ``diffrax.SubSaveAt(fn=...)``.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import activations
from .checkpoint import CheckpointStore
from .driver import Driver, State, assemble, chunks, fingerprint
from .error_check import simulate_with_error_check
from .errors import InvalidTypeError, bad_argument
from .params import combine
from .precision import x64
from .problem import check_positive_finite as _check_positive_finite
from .problem import check_sharpness_options, prepare_problem, resolve_devices
from .result import FlowResult
from .sharpness import initial_vector, resolve_sharpness
from .sliding import Sliding, initial_slide, sliding_capacity
from .solvers import get_solver, is_implicit
from .solvers.kinks import KINK_ACCEPT, field_kinks

__all__ = ["simulate_flow", "CLOCKS"]

CLOCKS = ("time", "accuracy")



def _versions() -> dict:
    """Software and backend that produced a result (results are reproducible bitwise only for the
    same versions on the same backend; see docs/determinism.md)."""
    return dict(_package_versions(), backend=f"{jax.default_backend()}:{jax.devices()[0].device_kind}")


@functools.cache
def _package_versions() -> dict:
    """Installed versions, read once per process (importlib.metadata costs ~10 ms a call)."""
    out = {}
    for pkg in ("gradflow", "jax", "jaxlib", "diffrax", "equinox", "lineax", "optimistix", "optax", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _check_controller_options(options) -> dict:
    """``controller_options`` as a dict of diffrax.PIDController keywords (or {'constant': True})."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidTypeError(f"controller_options: expected a dict, got {type(options).__name__}. "
                               "Pass e.g. controller_options=dict(dtmin=1e-12).")
    allowed = (set(inspect.signature(diffrax.PIDController).parameters) - {"rtol", "atol"}) | {"constant", "accept"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise bad_argument("controller_options", f"unknown or reserved keys {unknown} (rtol/atol are simulate_flow's own arguments)",
                           f"Use keys among {sorted(allowed)}.")
    return dict(options)


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
    solver: Any = None,
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
    auto_explicit_steps: int = 200,
    checkpoint: str | None = None,
    checkpoint_every: int = 10,
    progress: bool = False,
    devices: Any = None,
    step_control: str | None = None,
    activation_patterns: bool = True,
    error_check: bool = False,
    sharpness: bool | None = None,
    min_eigenvalue: bool = False,
    sharpness_tol: float = 1e-3,
    sharpness_max_iters: int = 100,
    sliding: bool | None = None,
) -> FlowResult:
    r"""Integrate the gradient flow dW/dt = −∇L(W) of ``model`` on ``data``.

    Args:
      model: a gradflow model, an Equinox or Flax NNX module, or ``gradflow.as_model(apply, params)``
        (see :mod:`gradflow.interop`); its trainable float arrays are W.
      data: a :class:`gradflow.Dataset` or an ``(x, y)`` tuple. Binary losses need y ∈ {−1, +1};
        ``loss='cross_entropy'`` needs integer classes and (n, C) outputs.
      t_max: final physical time (``clock='time'``; may be as large as float64 allows). With
        ``clock='accuracy'`` an optional extra stop when t reaches it.
      loss: 'exponential', 'logistic' or 'cross_entropy'. L(W) = Σ_i ℓ(p_i(W)).
      clock: 'time' (integrate in t) or 'accuracy' (integrate in α; needs ``until_accuracy``).
      until_accuracy: stop when ln(n/L) reaches this value (a diffrax event in the time clock,
        the end point in the accuracy clock).
      solver: None (default: in the time clock 'bosh3' for models with kinks — ReLU, max-pool, abs,
        found in the forward pass by :func:`gradflow.solvers.kinks.nonsmooth_primitives` — and
        'tsit5' otherwise; 'auto' in the accuracy clock, where long runs on small-margin data turn
        stiff), 'auto' (Bosh3 for models with kinks, else Tsit5, switching once to matrix-free
        Kvaerno5 when the flow turns stiff; see ``_Driver``), a name ('tsit5', 'dopri5', 'dopri8', 'bosh3', 'heun', 'kvaerno3/4/5',
        'implicit_euler') or a diffrax solver instance.
      rtol, atol: tolerances of the PID step-size controller.
      dt0: initial step (None: chosen from the vector field at the start, Hairer–Nørsett–Wanner).
      max_steps: the most solver steps of the whole run (all ``solver='auto'`` segments, checkpoint
        chunks and resumes together) before it stops with status 'failed'; ``stats['steps']`` is the total.
      save_at: increasing save points (times t, or ln(n/L) values in the accuracy clock). Default
        ``num_save`` points, geometric in t (or in ln(n/L) − ln(n/L₀)).
      jacobian: 'matrix_free' (Newton–GMRES on Hessian-vector products) or 'dense' for implicit
        solvers.
      dtype: 'float64' (default). 'float32' runs but warns.
      check_degree: measure the degree numerically and refuse a model whose declared degree
        disagrees.
      throw: raise :class:`gradflow.SolverFailure` (holding the partial result) instead of
        returning a failed result.
      controller_options: extra keyword arguments of ``diffrax.PIDController`` (implicit solvers
        default to the PI controller ``gradflow.solvers.IMPLICIT_CONTROLLER``); or
        ``{"constant": True}`` for fixed steps of size ``dt0`` (no error control).
      step_control: None (default: 'kink' for explicit solvers on models with kinks, else 'pid'),
        'pid' (diffrax's PIDController) or 'kink' (:class:`gradflow.solvers.kinks.KinkPIDController`:
        keeps steps with scaled error below ``accept`` = 10 instead of 1, so a step across an
        activation switch is not rejected and retried; measured on a ReLU CNN from a random start,
        5–14× fewer gradient evaluations than Tsit5 with 'pid' at equal error, ≤ 2 % rejected
        steps: ``benchmarks/nonsmooth.py``). ``controller_options={'accept': a}`` sets a.
      auto_explicit_steps: with ``solver='auto'``, the explicit steps per segment between
        stiffness checks.
      checkpoint: a file path (``.npz``). The run goes in segments of ``checkpoint_every`` save
        points; after each the state (W, ζ, u, clock value, controller state, next step size,
        diagnostics so far) is written atomically. Called again with the same path, the run
        resumes from the last segment; a checkpoint from another model, data set or set of options
        is refused with a clear error. The file is kept after the run (delete it to start over).
      checkpoint_every: save points per segment with ``checkpoint`` or ``progress``.
      devices: shard the data over devices: 'all' (every device JAX sees) or a list of devices.
        The examples are split along a 1-D ``jax.sharding.Mesh`` axis "data" (NamedSharding), the
        parameters are replicated, and XLA sums the per-device parts of L and ∇L. n must be a
        multiple of the number of devices. None (default): one device.
      progress: show a progress bar (t or ln(n/L), steps) updated after each segment.
      save_params: also store W at every save point, flattened, as ``diagnostics["params_flat"]``
        with shape (T, k) (memory T·k).
      activation_patterns: for models with ``activation_pattern`` (ReLUMLP, HomogeneousCNN,
        SmallDenseNet, SmallResNet), count at every save point the ReLU sign flips
        (``activation_flips``) and max-pool argmax switches (``pool_switches``) since the previous
        save point, and the share of pre-activations near zero (``near_zero_share``); see
        :mod:`gradflow.activations`. False switches them off.
      error_check: integrate a second time at rtol/10, atol/10 and report the differences at
        every save point (``error_direction``, ``error_margins``, ``error_smoothed_margin``; see
        :mod:`gradflow.error_check`). About doubles the cost, or more.
      sharpness: True: record ``diagnostics["sharpness"]`` = λ_max(∇²L) of the loss as defined (the sum,
        physical units), ``log_sharpness`` = ln λ_max (finite at any ln L, NaN if λ_max < 0) and
        ``sharpness_hvps`` at every save point and the final state (see :mod:`gradflow.sharpness`).
        Computed inside the compiled solve after the integration loop: the states at the save
        points are kept (memory T·k per segment) and a ``lax.scan`` runs a power iteration at each,
        warm-started from the previous point's eigenvector (carried across segments too). Cost per
        save point: ``sharpness_hvps`` Hessian-vector products (≈ 2–3 gradient evaluations each),
        1–3 once warm when the top eigenvector moves slowly, at most ``sharpness_max_iters`` (twice
        that when the dominant eigenvalue is negative); the total is ``stats["sharpness_hvps"]``.
        None (default; :func:`gradflow.sharpness.resolve_sharpness`): for models with at most
        ``SHARPNESS_DEFAULT_MAX_PARAMS`` = 20,000 parameters, the same converged values (λ_max to
        tol = 1e-3 relative at worst) at up to 10 save points (every ⌈num_save/10⌉-th, counted back
        from the last), as many of them as 2.5 % of the solve's gradient evaluations buy and the
        last one reached always; NaN at the others (:func:`gradflow.sharpness.budget_subset`,
        :func:`gradflow.sharpness.budget_points`). Off above 20,000 parameters. False: off.
      min_eigenvalue: also record λ_min(∇²L) as ``diagnostics["min_eigenvalue"]`` (off by
        default: it converges more slowly, ≤ ``sharpness_max_iters`` more HVPs per save point).
      sharpness_tol, sharpness_max_iters: the power iteration stops when ‖Hv − ρv‖ ≤ tol·|ρ| (ρ then
        within ~tol²·λ²/gap of the eigenvalue), or after max_iters HVPs.

    Returns:
      A :class:`gradflow.FlowResult` with the diagnostics at every save point reached, the final
      model, solver statistics and a status ('completed', 'stopped at target', 'failed').
    """
    # ---- validation: everything below runs before any compile ----
    arguments = dict(locals())  # for error_check's two runs
    for name, value in (("activation_patterns", activation_patterns), ("error_check", error_check)):
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidTypeError(f"{name}: expected True or False, got {type(value).__name__}. Pass {name}=True.")
    if error_check:
        return simulate_with_error_check(simulate_flow, arguments)
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
    for name, value, least in (("num_save", num_save, 2), ("auto_explicit_steps", auto_explicit_steps, 1),
                               ("checkpoint_every", checkpoint_every, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise bad_argument(name, f"must be an integer ≥ {least}, got {value!r}", f"Pass e.g. {name}={100 if name == 'num_save' else 10}.")
    if jacobian not in ("matrix_free", "dense"):
        raise bad_argument("jacobian", f"unknown value {jacobian!r}", "Use 'matrix_free' or 'dense'.")
    opts = _check_controller_options(controller_options)
    if opts.get("constant", False) and dt0 is None:
        raise bad_argument("dt0", "is required with controller_options={'constant': True}", "Pass the fixed step, e.g. dt0=0.01.")
    if not isinstance(max_steps, (int, np.integer)) or isinstance(max_steps, bool) or max_steps < 1:
        raise bad_argument("max_steps", f"must be a positive integer, got {max_steps!r}", "Pass e.g. max_steps=100_000.")
    if dtype not in ("float64", "float32"):
        raise bad_argument("dtype", f"unknown dtype {dtype!r}", "Use 'float64' (default) or 'float32'.")
    if sliding not in (None, True, False):
        raise bad_argument("sliding", f"must be None, True or False, got {sliding!r}",
                           "Pass sliding=False to integrate −∇L with relu'(0) = 0, or leave the default (None).")
    if step_control not in (None, "pid", "kink"):
        raise bad_argument("step_control", f"unknown value {step_control!r}", "Use None (chosen from the model), 'pid' or 'kink'.")
    if step_control == "kink" and opts.get("constant", False):
        raise bad_argument("step_control", "'kink' needs adaptive steps", "Drop controller_options={'constant': True} or step_control.")
    default_solver = solver is None
    sharpness_tol = check_sharpness_options(sharpness, min_eigenvalue, sharpness_tol, sharpness_max_iters)
    auto = isinstance(solver, str) and solver.lower() == "auto"
    solver_obj = get_solver("tsit5" if auto or default_solver else solver, rtol=rtol, atol=atol, jacobian=jacobian)

    # float32 runs with x64 off altogether, so no Python constant promotes part of the state.
    with x64() if dtype == "float64" else jax.enable_x64(False):
        fdtype = jnp.float64 if dtype == "float64" else jnp.float32
        prob = prepare_problem(model, data, loss, dtype, check_degree, "simulate_flow")
        loss_fn, degree, params0, static, x, y, n, log_loss0 = (
            prob.loss, prob.degree, prob.params0, prob.static, prob.x, prob.y, prob.n, prob.log_loss0)
        state_size = sum(int(a.size) for a in jax.tree_util.tree_leaves(params0)) + 2  # W, ζ, u
        field = field_kinks(params0, static, x)
        kinks = field.jumps
        if sliding is None:  # on wherever the forward pass has a C⁰ max site, with adaptive steps
            sliding = bool(field.sites.sliding) and not opts.get("constant", False)
        elif sliding and not field.sites.sliding:
            raise bad_argument("sliding", "is True but the model's forward pass has no C⁰ max site (ReLU) whose pairs "
                               "could slide", "Drop sliding=True, or pass sliding=False.")
        if default_solver:
            solver = ("bosh3" if kinks else "tsit5") if clock == "time" else "auto"
            auto = solver == "auto"
        explicit = "bosh3" if kinks else "tsit5"
        if auto:
            solver_obj = get_solver(explicit, rtol=rtol, atol=atol)
        if step_control is None:
            step_control = "kink" if kinks and not is_implicit(solver_obj) and not opts.get("constant", False) else "pid"
        if step_control == "kink":
            opts = {"accept": KINK_ACCEPT, **opts}
        if isinstance(solver, str) and not auto:
            solver_obj = get_solver(solver, rtol=rtol, atol=atol, jacobian=jacobian, state_size=state_size)
        acc0 = math.log(n) - log_loss0
        if log_loss0 >= math.log(loss_fn.ell_zero):
            warnings.warn(
                f"L(W_0) = e^{log_loss0:.4g} >= ℓ(0) = {loss_fn.ell_zero:.4g}: Assumption 2.3 of the paper is unmet, "
                "so its guarantees (α̃ nondecreasing, directional convergence, Lemma C.5) only apply once the "
                "flow has brought L below ℓ(0), if ever. Scale up the initialisation or start from a later W.",
                stacklevel=2,
            )
        if clock == "time" and loss_fn.log_neg_derivative(jnp.asarray(loss_fn.alpha_from_log_loss(jnp.asarray(log_loss0)))) > 700:
            raise bad_argument(
                "data.x", f"ln L(W_0) = {log_loss0:.4g}: the initial velocity |ℓ'(α)|∇α overflows float64",
                "Rescale the inputs (e.g. to unit norm) or the initialisation, or use clock='accuracy'.")
        if until_accuracy is not None and until_accuracy <= acc0:
            raise bad_argument("until_accuracy", f"= {until_accuracy} is not above the initial ln(n/L) = {acc0:.6g}", "Pass a larger target.")
        t_end = t_max if clock == "time" else until_accuracy
        if save_at is None:
            save_points = _default_save_points(clock, t_end, acc0, num_save)
        else:
            try:
                save_points = np.asarray(save_at, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise InvalidTypeError("save_at: expected numbers. Pass e.g. numpy.geomspace(1, t_max, 50).") from e
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
        f = lambda v: jnp.asarray(v, fdtype)  # noqa: E731  dynamic scalars: no recompiles
        if devices is not None:
            x, y, params0, static = _shard(devices, x, y, params0, static)
        patterns = bool(activation_patterns) and activations.has_activation_pattern(combine(params0, static), x)
        k_params = state_size - 2
        sharpness_opts = resolve_sharpness(sharpness, k_params, tol=sharpness_tol, max_iters=sharpness_max_iters,
                                           min_eigenvalue=min_eigenvalue, entry="flow")
        with_sharpness = sharpness_opts is not None
        common = dict(
            static=static, x=x, y=y, target_log_loss=f(target_log_loss), log_t_max=f(log_t_max),
            rtol=f(rtol), atol=f(atol), loss=loss_fn, degree=degree, clock=clock,
            event_kind=event_kind, controller_opts=tuple(sorted(opts.items())), save_params=bool(save_params),
            patterns=patterns,
            sharpness_opts=sharpness_opts,
        )
        slide0 = None
        if sliding:
            slots = sliding_capacity(field.sites.pairs, k_params)
            common["sliding"] = Sliding(field.sites, float(rtol), slots)
            slide0 = initial_slide(field.sites, fdtype, k_params, slots)
        s_start = 0.0 if clock == "time" else float(loss_fn.alpha_from_log_loss(jnp.asarray(log_loss0, fdtype)))
        config = dict(
            loss=loss_fn.name, clock=clock, solver=solver if isinstance(solver, str) else type(solver_obj).__name__,
            rtol=rtol, atol=atol, t_max=t_max, until_accuracy=until_accuracy, degree=degree, n=n,
            max_steps=int(max_steps), jacobian=jacobian, dtype=dtype, step_control=step_control,
            nonsmooth_primitives=field.primitives, model_interface=prob.interface, versions=_versions(),
            kink_sites=_site_summary(field.sites), sliding=bool(sliding),
            activation_patterns=patterns,
            **(activations.pattern_sizes(combine(params0, static), x) if patterns else {}),
            sharpness=bool(with_sharpness),
            **({"sharpness_budget": sharpness_opts.budget} if with_sharpness and sharpness_opts.budget else {}),
        )
        driver = Driver(
            common=common, f=f, t_end=t_end, max_steps=int(max_steps), auto=auto,
            explicit_steps=int(auto_explicit_steps), rtol=rtol, atol=atol, jacobian=jacobian, state_size=state_size,
        )
        eigvec0 = None
        if with_sharpness:
            v0 = initial_vector(k_params, fdtype)
            eigvec0 = (v0, v0[::-1] if min_eigenvalue else None)
        state = State(params0, jnp.zeros((2,), fdtype), s_start, solver_obj, None, None, dt0, eigvec0, slide0)
        segments_points = chunks(save_points, checkpoint_every if (checkpoint is not None or progress) else None)
        store = None
        if checkpoint is not None:
            store = CheckpointStore(checkpoint, fingerprint=fingerprint(x, y, params0, config, save_points))
        segments, state, done = driver.run(state, segments_points, store=store, progress=progress)
        if auto:
            config["switches"] = driver.switches
        return assemble(segments, static, degree, config=config, throw=throw, event_kind=event_kind)


def _site_summary(sites) -> dict:
    """The config entry of a model's elementwise-max sites (gradflow.kinkmap)."""
    return {"c0": len(sites.sliding), "c1": len(sites.sites) - len(sites.sliding), "c0_pairs": sites.pairs,
            "unsupported": list(sites.unsupported)}


def _shard(devices, x, y, params, static):
    """Place x, y split over a 1-D device mesh and the parameters replicated on it."""
    devs = resolve_devices(devices)
    if x.shape[0] % len(devs) != 0:
        raise bad_argument(
            "devices",
            f"{x.shape[0]} examples cannot be split evenly over {len(devs)} devices",
            "Use a number of examples divisible by the number of devices (drop or duplicate a few).",
        )
    mesh = Mesh(np.asarray(devs), ("data",))
    split = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    x = jax.device_put(x, split)
    y = jax.device_put(y, split)
    params = jax.device_put(params, replicated)
    static = jax.tree_util.tree_map(lambda a: jax.device_put(a, replicated) if eqx.is_array(a) else a, static)
    return x, y, params, static
