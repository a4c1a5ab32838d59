r"""The entry point of the flow, :func:`simulate_flow`: dW/dt = −∇L(W) (eq. 2.2), integrated with diffrax.

It checks every option before anything compiles (:mod:`gradflow.options`; the checks that relate
two options in :class:`_FlowOptions`), prepares the problem (:mod:`gradflow.problem`), makes the
:class:`Plan` of the run (the clock, the solver chosen from the model's kinks, the step control,
sliding, what is recorded) and hands it to the :class:`~gradflow.flow.driver.Driver`. The two
clocks that parametrise the same path, physical time and the smoothed margin α, are
:mod:`gradflow.clock`'s; the state is :class:`~gradflow.flow.state.FlowState`: W, [ζ, u] (the path
length of W/‖W‖, Lemma 3.4, and the accuracy clock's u), and the sliding state where pairs slide.
Diagnostics are evaluated inside the compiled solve at the save points
(:class:`~gradflow.flow.record.Record`).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import activations
from ..clock import Clock
from ..controllers import IMPLICIT_CONTROLLER, step_controller
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
from ..sharpness import initial_vector, resolve_sharpness
from ..sliding import Sliding, initial_slide
from ..solvers import get_solver, is_implicit
from .assemble import Segment, assemble
from .checkpoint import CheckpointStore
from .driver import Driver, State, chunks, fingerprint
from .field import Data, FieldArgs
from .integration import Request, choose_integration, is_auto
from .record import Record
from .segment import FlowSpec
from .state import error_norm

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
        probe = "tsit5" if self.solver is None or is_auto(self.solver) else self.solver
        get_solver(probe, jacobian=self.jacobian)
        if self.sliding and self.constant_steps:
            raise bad_argument("sliding", "needs adaptive steps (its band follows the step controller's rtol)",
                               "Drop controller_options={'constant': True}, or pass sliding=False.")

    def tightened(self, factor: float) -> _FlowOptions:
        """The runs of ``error_check``: tolerances divided by ``factor``, W saved at the save points,
        and (factor ≠ 1) a checkpoint file of its own."""
        run = self.run
        if factor != 1 and run.checkpoint is not None:
            run = replace(run, checkpoint=tight_checkpoint(run.checkpoint))
        return replace(self, solve=replace(self.solve, rtol=self.solve.rtol / factor, atol=self.solve.atol / factor),
                       save_params=True, diagnostics=replace(self.diagnostics, error_check=False), run=run)


@dataclass(frozen=True)
class Plan:
    """How a prepared problem is integrated: the clock, the solver of the first segment (``auto``:
    explicit segments, switching to Kvaerno5 when stiff), the step control chosen from the model's
    kinks, the sliding field, what is recorded, the stop before the end point, and the run's
    tolerances as traced scalars (the step controller's: :meth:`spec`)."""

    clock: Clock
    solver_label: Any  # the solver as recorded in config: its name, or the instance
    solver: Any  # the first segment's diffrax solver
    auto: bool
    explicit_steps: int
    field: FieldKinks
    step_control: str  # 'pid' or 'kink'
    controller_options: dict  # diffrax.PIDController keywords (with 'accept' for the kink controller), or constant
    sliding: Sliding | None
    record: Record
    rtol: jax.Array
    atol: jax.Array
    stop: Any  # the condition of the stop before the end point, or None
    max_steps: int
    fdtype: Any
    jacobian: str
    state_size: int
    max_capacity: int = 0  # the most pairs the sliding capacity may grow to (gradflow.sliding.sliding_capacity)

    def spec(self, solver) -> FlowSpec:
        """The spec of a segment solved with ``solver``: its step controller carries the run's
        tolerances (an implicit solver's Newton iterations take theirs from it); implicit solvers
        get the PI settings of :data:`gradflow.controllers.IMPLICIT_CONTROLLER` and no kink
        control (an implicit step across a kink fails its Newton solve)."""
        opts = dict(self.controller_options)
        if opts.get("constant", False):
            controller = diffrax.ConstantStepSize()
        else:
            if is_implicit(solver):
                opts = {**IMPLICIT_CONTROLLER, **{k: v for k, v in opts.items() if k != "accept"}}
            controller = step_controller(self.rtol, self.atol, {"norm": error_norm, **opts})
        event = None if self.stop is None else diffrax.Event(self.stop)
        return FlowSpec(self.clock, solver, controller, self.record, event, self.sliding, self.max_steps,
                        max_capacity=self.max_capacity)

    def with_capacity(self, capacity: int) -> Plan:
        """This plan with the sliding solver's capacity set to ``capacity`` (one more compile)."""
        return replace(self, sliding=self.sliding.with_capacity(capacity))

    def solver_by_name(self, name: str):
        """A solver from its recorded name (a checkpoint's, or the implicit one ``auto`` switches to)."""
        constant = self.controller_options.get("constant", False)
        return get_solver(name.lower(), jacobian=self.jacobian, state_size=self.state_size,
                          **(dict(rtol=float(self.rtol), atol=float(self.atol)) if constant else {}))

    def field_args(self, data: Data) -> FieldArgs:
        """The vector field's args (for the stiffness check of ``auto``)."""
        sliding = None if self.sliding is None else self.sliding.at_tolerance(self.rtol, self.atol)
        return FieldArgs(data.static, data.x, data.y, data.loss, self.clock, sliding)


def _simulate(model, data, options: _FlowOptions) -> FlowResult:
    """One flow: prepare the problem, plan and drive the solve, assemble the result."""
    # float32 runs with x64 off altogether, so no Python constant promotes part of the state.
    with x64() if options.dtype == "float64" else jax.enable_x64(False):
        prob = prepare_problem(model, data, options.loss, options.dtype, options.check_degree, "simulate_flow")
        acc0 = _check_start(prob, options.solve)
        plan = _plan(prob, options)
        if options.run.devices is not None:
            prob = _shard(options.run.devices, prob)
        config = _config(prob, options, plan)
        segments, switches = _drive(prob, options, plan, config, acc0)
        if plan.auto:
            config["switches"] = switches
        solve = options.solve
        return assemble(segments, prob.static, prob.degree, config=config, throw=options.run.throw,
                        stop_reason=solve.clock.stop(solve.t_max, solve.until_accuracy))


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
    solve.clock.check_start(loss_fn, log_loss0)
    check_target(solve.until_accuracy, acc0)
    return acc0


def _plan(prob: Problem, options: _FlowOptions) -> Plan:
    """The solver (the default chosen from the model's kinks and the clock), the step control,
    sliding (None: on wherever the forward pass has a C⁰ max site, with adaptive steps), and what
    is recorded."""
    solve = options.solve
    field = field_kinks(prob.params0, prob.static, prob.x)
    k_params = _state_size(prob) - 2
    fdtype = jnp.float64 if options.dtype == "float64" else jnp.float32
    choice = choose_integration(field, solve.clock, Request(options.solver, options.step_control, options.sliding,
                                                            options.controller, options.jacobian, solve.rtol, solve.atol),
                                k_params, start=(prob.params0, prob.static, prob.x))
    diag = options.diagnostics
    patterns = (diag.activation_patterns is not False
                and activations.has_activation_pattern(combine(prob.params0, prob.static), prob.x))
    sharpness = resolve_sharpness(diag.sharpness, k_params, tol=diag.sharpness_tol, max_iters=diag.sharpness_max_iters,
                                  min_eigenvalue=diag.min_eigenvalue, entry="flow")
    record = Record(prob.degree, options.save_params, patterns, sharpness)
    f = lambda v: jnp.asarray(v, fdtype)  # noqa: E731  dynamic scalars: no recompiles
    target = None if solve.until_accuracy is None else f(solve.target_log_loss(prob.n))
    log_t_max = None if solve.t_max is None else f(solve.log_t_max)
    return Plan(solve.clock, choice.label, choice.solver, choice.auto, options.auto_explicit_steps, field,
                choice.step_control, choice.controller, choice.sliding, record, f(solve.rtol), f(solve.atol),
                solve.clock.stop_condition(target, log_t_max), solve.max_steps, fdtype, options.jacobian, k_params + 2,
                choice.max_capacity)


def _state_size(prob: Problem) -> int:
    """The length of the ODE state: W, ζ and u."""
    return sum(int(a.size) for a in jax.tree_util.tree_leaves(prob.params0)) + 2


def _config(prob: Problem, options: _FlowOptions, plan: Plan) -> dict:
    """``result.config``: the options as used, the model's interface and the software versions."""
    solve, record = options.solve, plan.record
    return dict(
        loss=prob.loss.name, clock=solve.clock.name,
        solver=plan.solver_label if isinstance(plan.solver_label, str) else type(plan.solver).__name__,
        rtol=solve.rtol, atol=solve.atol, t_max=solve.t_max, until_accuracy=solve.until_accuracy, degree=prob.degree,
        n=prob.n, max_steps=solve.max_steps, jacobian=options.jacobian, dtype=options.dtype,
        step_control=plan.step_control, nonsmooth_primitives=plan.field.primitives, model_interface=prob.interface,
        versions=_versions(), kink_sites=_site_summary(plan.field.sites), sliding=plan.sliding is not None,
        **({"surface_copies": _copies_summary(plan.sliding.copies)} if plan.sliding is not None else {}),
        activation_patterns=record.patterns,
        **(activations.pattern_sizes(combine(prob.params0, prob.static), prob.x) if record.patterns else {}),
        sharpness=record.sharpness is not None,
        **({"sharpness_budget": record.sharpness.budget} if record.sharpness and record.sharpness.budget else {}),
    )


def _drive(prob: Problem, options: _FlowOptions, plan: Plan, config: dict,
           acc0: float) -> tuple[list[Segment], list[str]]:
    """Run the solve in segments (:class:`gradflow.flow.driver.Driver`): checkpoint or progress chunks,
    ``solver='auto'`` segments. Returns the segments and the solver switches."""
    solve, diag, run = options.solve, options.diagnostics, options.run
    save_points = solve.save_points(acc0)
    k_params = plan.state_size - 2
    slide0 = None if plan.sliding is None else initial_slide(plan.sliding.max_pairs, k_params, plan.fdtype)
    data = Data(prob.static, prob.x, prob.y, prob.loss)
    driver = Driver(plan, data, end=solve.end, max_steps=solve.max_steps)
    eigvec0 = None
    if plan.record.sharpness:
        v0 = initial_vector(k_params, plan.fdtype)
        eigvec0 = (v0, v0[::-1] if diag.min_eigenvalue else None)
    s_start = float(solve.clock.start(prob.loss, jnp.asarray(prob.log_loss0, plan.fdtype)))
    state = State(prob.params0, jnp.zeros((2,), plan.fdtype), s_start, plan.solver, None, None, solve.dt0, eigvec0,
                  slide0)
    store = None
    if run.checkpoint is not None:
        store = CheckpointStore(run.checkpoint, fingerprint=fingerprint(prob.x, prob.y, prob.params0, config, save_points))
    segmented = run.checkpoint is not None or run.progress
    segments, _ = driver.run(state, chunks(save_points, run.checkpoint_every if segmented else None), store=store,
                             progress=run.progress)
    return segments, driver.switches


def _site_summary(sites) -> dict:
    """The config entry of a model's elementwise-max sites (gradflow.kinkmap)."""
    return {"c0": len(sites.sliding), "c1": len(sites.sites) - len(sites.sliding), "c0_pairs": sites.pairs,
            "unsupported": list(sites.unsupported), "shared": [list(pair) for pair in sites.shared]}


def _copies_summary(copies) -> dict:
    """The config entry of the copies of one kink surface the sliding field treats as one (gradflow.sliding.copies)."""
    return {"classes": 0 if copies is None else copies.classes, "followers": 0 if copies is None else copies.count}


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
