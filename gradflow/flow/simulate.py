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
import math
import warnings
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import activations
from ..checkpoint import CheckpointStore
from ..controllers import KINK_ACCEPT
from ..error_check import simulate_with_error_check, tight_checkpoint
from ..errors import bad_argument
from ..kinkmap import FieldKinks, field_kinks
from ..options import (
    CLOCKS,
    DTYPES,
    Diagnostics,
    RunOptions,
    SolveOptions,
    check_bool,
    check_choice,
    check_controller_options,
    check_int,
    check_solve_options,
    check_target,
    grouped_options,
    resolve_devices,
)
from ..params import combine
from ..precision import x64
from ..problem import Problem, prepare_problem
from ..result import FlowResult
from ..sharpness import SharpnessPlan, initial_vector, resolve_sharpness
from ..sliding import Sliding, initial_slide, sliding_capacity
from ..solvers import get_solver, is_implicit
from .assemble import assemble
from .driver import Driver, State, chunks, fingerprint

__all__ = ["simulate_flow", "CLOCKS"]


# every field of Diagnostics and RunOptions
_SUPPORTS = ("sharpness", "min_eigenvalue", "sharpness_tol", "sharpness_max_iters", "activation_patterns",
             "error_check", "checkpoint", "checkpoint_every", "progress", "devices", "throw")


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
    save_params: bool = False,
    jacobian: str = "matrix_free",
    dtype: str = "float64",
    check_degree: bool = True,
    controller_options: dict | None = None,
    auto_explicit_steps: int = 200,
    step_control: str | None = None,
    sliding: bool | None = None,
    diagnostics: Diagnostics | None = None,
    run: RunOptions | None = None,
    **deprecated: Any,
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
        found in the forward pass by :func:`gradflow.kinkmap.field_kinks` — and
        'tsit5' otherwise; 'auto' in the accuracy clock, where long runs on small-margin data turn
        stiff, except with sliding, where it is 'bosh3': the implicit solvers do not enter sliding
        modes), 'auto' (Bosh3 for models with kinks, else Tsit5, switching once to matrix-free
        Kvaerno5 when the flow turns stiff; see :class:`gradflow.flow.driver.Driver`), a name ('tsit5',
        'dopri5', 'dopri8', 'bosh3', 'heun', 'kvaerno3/4/5', 'implicit_euler') or a diffrax solver
        instance.
      rtol, atol: tolerances of the PID step-size controller.
      dt0: initial step (None: chosen from the vector field at the start, Hairer–Nørsett–Wanner).
      max_steps: the most solver steps of the whole run (all ``solver='auto'`` segments, checkpoint
        chunks and resumes together) before it stops with status 'failed'; ``stats['steps']`` is the total.
      save_at: increasing save points (times t, or ln(n/L) values in the accuracy clock). Default
        ``num_save`` points, geometric in t (or in ln(n/L) − ln(n/L₀)).
      num_save: the number of default save points (≥ 2).
      save_params: also store W at every save point, flattened, as ``diagnostics["params_flat"]``
        with shape (T, k) (memory T·k); :func:`gradflow.compare` and :mod:`gradflow.theory` need it.
      jacobian: 'matrix_free' (Newton–GMRES on Hessian-vector products) or 'dense' for implicit
        solvers.
      dtype: 'float64' (default). 'float32' runs but warns.
      check_degree: measure the degree numerically and refuse a model whose declared degree
        disagrees.
      controller_options: extra keyword arguments of ``diffrax.PIDController`` (implicit solvers
        default to the PI controller ``gradflow.solvers.IMPLICIT_CONTROLLER``); or
        ``{"constant": True}`` for fixed steps of size ``dt0`` (no error control).
      auto_explicit_steps: with ``solver='auto'``, the explicit steps per segment between
        stiffness checks.
      step_control: None (default: 'kink' for explicit solvers on models with kinks, else 'pid'),
        'pid' (diffrax's PIDController) or 'kink' (:class:`gradflow.controllers.KinkPIDController`:
        keeps steps with scaled error below ``accept`` = 10 instead of 1, so a step across an
        activation switch is not rejected and retried; measured on a ReLU CNN from a random start,
        5–14× fewer gradient evaluations than Tsit5 with 'pid' at equal error, ≤ 2 % rejected
        steps: ``benchmarks/nonsmooth.py``). ``controller_options={'accept': a}`` sets a.
      sliding: the sliding-mode (Filippov) field on the model's C⁰ kinks (:mod:`gradflow.sliding`).
        None (default): on when the forward pass has a C⁰ elementwise ``max`` site (a ReLU) and the
        steps are adaptive; True: on (refused for a model without such a site); False: off (−∇L
        with relu'(0) = 0).
      diagnostics: a :class:`gradflow.Diagnostics`: what is recorded besides the paper's
        diagnostics (sharpness, λ_min, activation patterns, a second run for error bars). None:
        ``Diagnostics()``, its defaults.
      run: a :class:`gradflow.RunOptions`: checkpoints, progress bar, devices, ``throw``. None:
        ``RunOptions()``, its defaults.
      **deprecated: the former flat keywords ``sharpness``, ``min_eigenvalue``, ``sharpness_tol``,
        ``sharpness_max_iters``, ``activation_patterns``, ``error_check`` (now fields of
        ``diagnostics``) and ``checkpoint``, ``checkpoint_every``, ``progress``, ``devices``,
        ``throw`` (now fields of ``run``) still work, with a ``DeprecationWarning``.

    Returns:
      A :class:`gradflow.FlowResult` with the diagnostics at every save point reached, the final
      model, solver statistics and a status ('completed', 'stopped at target', 'failed').
    """
    diagnostics, run = grouped_options("simulate_flow", deprecated, diagnostics, run, supports=_SUPPORTS)
    options = _FlowOptions(
        solve=check_solve_options(clock=clock, t_max=t_max, until_accuracy=until_accuracy, rtol=rtol, atol=atol,
                                  dt0=dt0, max_steps=max_steps, num_save=num_save, save_at=save_at),
        loss=loss, solver=solver, jacobian=check_choice("jacobian", jacobian, ("matrix_free", "dense")),
        dtype=check_choice("dtype", dtype, DTYPES, "Use 'float64' (default) or 'float32'."),
        check_degree=check_bool("check_degree", check_degree), controller=check_controller_options(controller_options),
        save_params=check_bool("save_params", save_params),
        auto_explicit_steps=check_int("auto_explicit_steps", auto_explicit_steps, example=200),
        step_control=step_control, sliding=check_bool("sliding", sliding, allow_none=True),
        diagnostics=diagnostics, run=run,
    )
    options.check()
    if diagnostics.error_check:
        return simulate_with_error_check(lambda tighter: _simulate(model, data, options.tightened(tighter)),
                                         keep_params=options.save_params)
    return _simulate(model, data, options)


@dataclass(frozen=True)
class _FlowOptions:
    """The options of one :func:`simulate_flow` call, each checked (see simulate_flow for their meaning)."""

    solve: SolveOptions
    loss: Any
    solver: Any  # as given: None, 'auto', a name or a diffrax solver
    jacobian: str
    dtype: str
    check_degree: bool
    controller: dict  # controller_options
    save_params: bool
    auto_explicit_steps: int
    step_control: str | None
    sliding: bool | None
    diagnostics: Diagnostics
    run: RunOptions

    @property
    def constant_steps(self) -> bool:
        return bool(self.controller.get("constant", False))

    def check(self) -> None:
        """The checks that relate two options, and the solver's name (built once here to check it)."""
        if self.constant_steps and self.solve.dt0 is None:
            raise bad_argument("dt0", "is required with controller_options={'constant': True}",
                               "Pass the fixed step, e.g. dt0=0.01.")
        check_choice("step_control", self.step_control, (None, "pid", "kink"),
                     "Use None (chosen from the model), 'pid' or 'kink'.")
        if self.step_control == "kink" and self.constant_steps:
            raise bad_argument("step_control", "'kink' needs adaptive steps",
                               "Drop controller_options={'constant': True} or step_control.")
        probe = "tsit5" if self.solver is None or _is_auto(self.solver) else self.solver
        get_solver(probe, rtol=self.solve.rtol, atol=self.solve.atol, jacobian=self.jacobian)

    def tightened(self, factor: float) -> _FlowOptions:
        """The runs of ``error_check``: tolerances divided by ``factor``, W saved at the save points,
        and (factor ≠ 1) a checkpoint file of its own."""
        run = self.run
        if factor != 1 and run.checkpoint is not None:
            run = replace(run, checkpoint=tight_checkpoint(run.checkpoint))
        return replace(self, solve=replace(self.solve, rtol=self.solve.rtol / factor, atol=self.solve.atol / factor),
                       save_params=True, diagnostics=replace(self.diagnostics, error_check=False), run=run)


def _is_auto(solver) -> bool:
    return isinstance(solver, str) and solver.lower() == "auto"


class _Plan(NamedTuple):
    """How a prepared problem is integrated."""

    solver: Any  # the solver as recorded in config: its name, or the instance
    solver_obj: Any  # the first segment's diffrax solver
    auto: bool  # solver='auto': explicit segments, switching to Kvaerno5 when stiff
    field: FieldKinks  # the kinks of the forward pass
    step_control: str  # 'pid' or 'kink'
    controller: dict  # the controller options, with the kink controller's acceptance threshold
    sliding: bool  # the sliding-mode field on the C⁰ max sites (gradflow.sliding)


def _simulate(model, data, options: _FlowOptions) -> FlowResult:
    """One flow: prepare the problem, plan and drive the solve, assemble the result."""
    # float32 runs with x64 off altogether, so no Python constant promotes part of the state.
    with x64() if options.dtype == "float64" else jax.enable_x64(False):
        prob = prepare_problem(model, data, options.loss, options.dtype, options.check_degree, "simulate_flow")
        acc0 = _check_start(prob, options.solve)
        plan = _plan(prob, options)
        if options.run.devices is not None:
            prob = _shard(options.run.devices, prob)
        recorded = _recorded(prob, options.diagnostics)
        config = _config(prob, options, plan, recorded)
        segments, switches = _drive(prob, options, plan, recorded, config, acc0)
        if plan.auto:
            config["switches"] = switches
        return assemble(segments, prob.static, prob.degree, config=config, throw=options.run.throw,
                        event_kind=options.solve.event_kind)


def _check_start(prob: Problem, solve: SolveOptions) -> float:
    """ln(n/L(W₀)), after the checks of the options against the start (target, overflow)."""
    loss_fn, log_loss0 = prob.loss, prob.log_loss0
    acc0 = math.log(prob.n) - log_loss0
    if log_loss0 >= math.log(loss_fn.ell_zero):
        warnings.warn(
            f"L(W_0) = e^{log_loss0:.4g} >= ℓ(0) = {loss_fn.ell_zero:.4g}: Assumption 2.3 of the paper is unmet, "
            "so its guarantees (α̃ nondecreasing, directional convergence, Lemma C.5) only apply once the "
            "flow has brought L below ℓ(0), if ever. Scale up the initialisation or start from a later W.",
            stacklevel=4,
        )
    if solve.clock == "time" and loss_fn.log_neg_derivative(jnp.asarray(loss_fn.alpha_from_log_loss(jnp.asarray(log_loss0)))) > 700:
        raise bad_argument(
            "data.x", f"ln L(W_0) = {log_loss0:.4g}: the initial velocity |ℓ'(α)|∇α overflows float64",
            "Rescale the inputs (e.g. to unit norm) or the initialisation, or use clock='accuracy'.")
    check_target(solve.until_accuracy, acc0)
    return acc0


def _plan(prob: Problem, options: _FlowOptions) -> _Plan:
    """The solver (the default chosen from the model's kinks and the clock), the step control and
    sliding (None: on wherever the forward pass has a C⁰ max site, with adaptive steps)."""
    field = field_kinks(prob.params0, prob.static, prob.x)
    kinks = field.jumps
    sliding = options.sliding
    if sliding is None:
        sliding = bool(field.sites.sliding) and not options.constant_steps
    elif sliding and not field.sites.sliding:
        raise bad_argument("sliding", "is True but the model's forward pass has no C⁰ max site (ReLU) whose pairs "
                           "could slide", "Drop sliding=True, or pass sliding=False.")
    solver = options.solver
    if solver is None:
        # With sliding the default stays explicit in the accuracy clock too: the Kvaerno ESDIRKs that
        # 'auto' switches to do not enter sliding modes (their Newton iterations do not converge on
        # a step across an attracting surface, and the step size collapses there). Measured on wine,
        # 8 ReLU units, seed 2, init scale 1 (benchmarks/sliding.py's start), to ln(n/L) = 100:
        # 'auto' switched at 57.7 and failed at 58.8; Bosh3 completed in 6,374 steps.
        late = "bosh3" if sliding else "auto"
        solver = ("bosh3" if kinks else "tsit5") if options.solve.clock == "time" else late
    auto = _is_auto(solver)
    rtol, atol = options.solve.rtol, options.solve.atol
    if auto:
        solver_obj = get_solver("bosh3" if kinks else "tsit5", rtol=rtol, atol=atol)
    else:
        solver_obj = get_solver(solver, rtol=rtol, atol=atol, jacobian=options.jacobian, state_size=_state_size(prob))
    step_control = options.step_control
    if step_control is None:
        step_control = "kink" if kinks and not is_implicit(solver_obj) and not options.constant_steps else "pid"
    controller = {"accept": KINK_ACCEPT, **options.controller} if step_control == "kink" else options.controller
    return _Plan(solver, solver_obj, auto, field, step_control, controller, sliding)


def _state_size(prob: Problem) -> int:
    """The length of the ODE state: W, ζ and u."""
    return sum(int(a.size) for a in jax.tree_util.tree_leaves(prob.params0)) + 2


class _Recorded(NamedTuple):
    """Which optional diagnostics the solve computes."""

    patterns: bool  # activation patterns (gradflow.activations)
    sharpness: SharpnessPlan | None  # the sharpness, and λ_min if asked (gradflow.sharpness); None: off


def _recorded(prob: Problem, diag: Diagnostics) -> _Recorded:
    """The diagnostics' defaults resolved for this model: patterns where it has them (its own
    ``activation_pattern`` or elementwise max sites), the sharpness by
    :func:`gradflow.sharpness.resolve_sharpness` (sharpness=None: on a budget for models with at
    most SHARPNESS_DEFAULT_MAX_PARAMS parameters)."""
    patterns = (diag.activation_patterns is not False
                and activations.has_activation_pattern(combine(prob.params0, prob.static), prob.x))
    plan = resolve_sharpness(diag.sharpness, _state_size(prob) - 2, tol=diag.sharpness_tol,
                             max_iters=diag.sharpness_max_iters, min_eigenvalue=diag.min_eigenvalue, entry="flow")
    return _Recorded(patterns, plan)


def _config(prob: Problem, options: _FlowOptions, plan: _Plan, recorded: _Recorded) -> dict:
    """``result.config``: the options as used, the model's interface and the software versions."""
    solve = options.solve
    return dict(
        loss=prob.loss.name, clock=solve.clock,
        solver=plan.solver if isinstance(plan.solver, str) else type(plan.solver_obj).__name__,
        rtol=solve.rtol, atol=solve.atol, t_max=solve.t_max, until_accuracy=solve.until_accuracy, degree=prob.degree,
        n=prob.n, max_steps=solve.max_steps, jacobian=options.jacobian, dtype=options.dtype,
        step_control=plan.step_control, nonsmooth_primitives=plan.field.primitives, model_interface=prob.interface,
        versions=_versions(), kink_sites=_site_summary(plan.field.sites), sliding=plan.sliding,
        activation_patterns=recorded.patterns,
        **(activations.pattern_sizes(combine(prob.params0, prob.static), prob.x) if recorded.patterns else {}),
        sharpness=recorded.sharpness is not None,
        **({"sharpness_budget": recorded.sharpness.budget} if recorded.sharpness and recorded.sharpness.budget else {}),
    )


def _drive(prob: Problem, options: _FlowOptions, plan: _Plan, recorded: _Recorded, config: dict,
           acc0: float) -> tuple[list[dict], list[str]]:
    """Run the solve in segments (:class:`gradflow.flow.driver.Driver`): checkpoint or progress chunks,
    ``solver='auto'`` segments. Returns the segments and the solver switches."""
    solve, diag, run = options.solve, options.diagnostics, options.run
    fdtype = jnp.float64 if options.dtype == "float64" else jnp.float32
    f = lambda v: jnp.asarray(v, fdtype)  # noqa: E731  dynamic scalars: no recompiles
    save_points = solve.save_points(acc0)
    k_params = _state_size(prob) - 2
    common = dict(
        static=prob.static, x=prob.x, y=prob.y, target_log_loss=f(solve.target_log_loss(prob.n)),
        log_t_max=f(solve.log_t_max), rtol=f(solve.rtol), atol=f(solve.atol), loss=prob.loss, degree=prob.degree,
        clock=solve.clock, event_kind=solve.event_kind, controller_opts=tuple(sorted(plan.controller.items())),
        save_params=options.save_params, patterns=recorded.patterns,
        sharpness_opts=recorded.sharpness,
    )
    slide0 = None
    if plan.sliding:
        slots = sliding_capacity(plan.field.sites.pairs, k_params)
        common["sliding"] = Sliding(plan.field.sites, float(solve.rtol), slots)
        slide0 = initial_slide(plan.field.sites, fdtype, k_params, slots)
    driver = Driver(
        common=common, f=f, t_end=solve.t_end, max_steps=solve.max_steps, auto=plan.auto,
        explicit_steps=options.auto_explicit_steps, rtol=solve.rtol, atol=solve.atol, jacobian=options.jacobian,
        state_size=k_params + 2,
    )
    eigvec0 = None
    if recorded.sharpness:
        v0 = initial_vector(k_params, fdtype)
        eigvec0 = (v0, v0[::-1] if diag.min_eigenvalue else None)
    s_start = 0.0 if solve.clock == "time" else float(prob.loss.alpha_from_log_loss(jnp.asarray(prob.log_loss0, fdtype)))
    state = State(prob.params0, jnp.zeros((2,), fdtype), s_start, plan.solver_obj, None, None, solve.dt0, eigvec0, slide0)
    store = None
    if run.checkpoint is not None:
        store = CheckpointStore(run.checkpoint, fingerprint=fingerprint(prob.x, prob.y, prob.params0, config, save_points))
    segmented = run.checkpoint is not None or run.progress
    segments, _, _ = driver.run(state, chunks(save_points, run.checkpoint_every if segmented else None), store=store,
                                progress=run.progress)
    return segments, driver.switches


def _site_summary(sites) -> dict:
    """The config entry of a model's elementwise-max sites (gradflow.kinkmap)."""
    return {"c0": len(sites.sliding), "c1": len(sites.sites) - len(sites.sliding), "c0_pairs": sites.pairs,
            "unsupported": list(sites.unsupported)}


def _shard(devices, prob: Problem) -> Problem:
    """The problem with x, y split over a 1-D device mesh and the parameters replicated on it."""
    devs = resolve_devices(devices)
    if prob.n % len(devs) != 0:
        raise bad_argument(
            "devices",
            f"{prob.n} examples cannot be split evenly over {len(devs)} devices",
            "Use a number of examples divisible by the number of devices (drop or duplicate a few).",
        )
    mesh = Mesh(np.asarray(devs), ("data",))
    split = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    return replace(
        prob, x=jax.device_put(prob.x, split), y=jax.device_put(prob.y, split),
        params0=jax.device_put(prob.params0, replicated),
        static=jax.tree_util.tree_map(lambda a: jax.device_put(a, replicated) if eqx.is_array(a) else a, prob.static),
    )


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
