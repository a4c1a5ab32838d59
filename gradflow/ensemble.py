"""Ensembles: many initial models integrated in one compiled solve.

Two step-size policies (``steps=``):

* ``"per_member"`` (default): ``jax.vmap`` of the whole solve. Each member keeps its own adaptive
  steps, exactly as in its own :func:`gradflow.simulate_flow` run (same controller, same error
  norm); the batched loop runs until the slowest member is done, finished members idling. A
  member's result equals its own run up to rounding, and to solver tolerance where rounding
  flips an accept/reject decision (ReLU-type fields, whose kinks make steps fail, do this).
* ``"shared"`` (time clock only): the members are one ODE, one (members, k + 1) array of rows
  [W_i, ζ_i]; one adaptive step serves all, and its error norm is the *maximum over members* of
  each member's RMS error, so every member is integrated at least as accurately as in its own
  run. Step control is PI (pcoeff = icoeff = 0.3): with a max-over-members norm the plain I
  controller rejected ~1/3 of the steps. Each stage is one batched gradient evaluation and the
  solver's arithmetic is one fused op per stage, but the step is set by the hardest member at
  every moment: for ReLU-type members, whose kink crossings force small steps at different
  times, the shared solve takes ~2× the steps of the slowest member alone (831 vs 455 for 32
  squared-ReLU members of width 16). Use it for smooth models with similar members.

Sliding modes (:mod:`gradflow.sliding`): members with C⁰ kinks (ReLU, abs) integrate the same
sliding field as their own :func:`gradflow.simulate_flow` runs (the same solver, step control and
sliding rule, :mod:`gradflow.flow.integration`), each with its own sliding set, vmapped; under vmap
each branch of the sliding solver (an entry, an exit, a new normal) runs only on the steps where
some member takes it. The set is held at a capacity that starts at
:data:`gradflow.sliding.ENSEMBLE_CAPACITY`: every step copies and selects each member's normals and
their factor at that size, so it is kept small, and the members whose set outgrows it (the one
vmapped segment cannot grow it as a single run's driver does) are run again from their starts at
twice the capacity, up to the most the model needs (:func:`gradflow.sliding.sliding_capacity`);
``stats['solves']`` counts the vmapped solves. ``steps='shared'`` cannot slide (one step size, one ODE).

``run=RunOptions(devices=...)`` splits the members over devices (each device runs its block's loop
on its own, see :func:`simulate_ensemble`); on a multi-core CPU this is how an ensemble uses more
than one core.

Throughput (``benchmarks/ensemble.py``, 2 CPU cores): the batched gradient of 32 small members is
compute-bound (tiny-K matmuls and f64 elementwise loops over members × examples × width) while a
single member's is bound by per-op dispatch, so batching pays most for the smallest models; the
measured ratios against a Python loop of ``simulate_flow`` calls are in that benchmark's JSON.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from .clock import TimeClock
from .controllers import initial_step, nan_to_inf, step_controller
from .errors import InvalidTypeError, bad_argument
from .flow.assemble import Segment, assemble, fail_off_clock, result_name
from .flow.field import Data, FieldArgs, vector_field
from .flow.integration import Request, choose_integration
from .flow.record import Record
from .flow.segment import FlowSpec, SegmentResult, Start, solve
from .flow.state import FlowState, error_norm
from .kinkmap import field_kinks
from .options import (
    Diagnostics,
    RunOptions,
    check_bool,
    check_choice,
    check_solve_options,
    check_target,
    grouped_options,
    resolve_devices,
)
from .params import all_finite, combine, partition
from .precision import x64
from .problem import prepare_problem
from .result import FlowResult
from .sliding import ENSEMBLE_CAPACITY, grown_capacity, initial_slide
from .solvers import evaluations_at_start, evaluations_per_step, get_solver, is_implicit

__all__ = ["simulate_ensemble", "EnsembleResult"]


@dataclass
class EnsembleResult:
    """One :class:`FlowResult` per member, plus the diagnostics stacked along a leading axis.

    ``diagnostics[name]`` has shape (members, T, ...); a member that stopped early (failure or
    target) has NaN after its last save point. ``stats``: ``wall_time`` (of all the compiled
    solves), ``members`` and ``solves`` (1, plus one per rerun of the members whose sliding set
    outgrew the capacity; see the module docstring)."""

    members: list[FlowResult]
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, i: int) -> FlowResult:
        return self.members[i]

    @property
    def status(self) -> list[str]:
        return [m.status for m in self.members]


@eqx.filter_jit
def _ensemble_solve(spec: FlowSpec, data: Data, params0, s0, slide0, save_points, end, dt0, mesh=None):
    """Every member's own solve (:func:`gradflow.flow.segment.solve`), vmapped over the members'
    starts (W₀, s₀); per device block with a ``mesh``. Returns the
    :class:`~gradflow.flow.segment.SegmentResult` with the members along the leading axis of every leaf."""

    def body(sharded, shared):
        p0, s0_, slide0_ = sharded
        spec_, data_, save_points_, end_, dt0_ = shared

        def member(p, s, slide):
            start = Start(FlowState(p, jnp.zeros((2,), s.dtype), slide), s, dt0=dt0_)
            return solve(spec_, data_, start, save_points_, end_, jnp.asarray(spec_.max_steps, jnp.int32))

        return eqx.filter_vmap(member)(p0, s0_, slide0_)

    return _over_members(body, mesh, (params0, s0, slide0), (spec, data, save_points, end, dt0))


def _over_members(body, mesh, sharded, shared):
    """``body(sharded, shared)``, where ``sharded`` has the members along its leading axis.

    With a ``mesh`` (one axis, "members") each device runs ``body`` on its own block of members,
    with ``shared`` replicated: ``jax.shard_map`` with no collective inside, so the devices never
    wait for each other (each block has its own solver loop and step sizes)."""
    if mesh is None:
        return body(sharded, shared)
    spec = jax.sharding.PartitionSpec
    arrays, rest = eqx.partition(shared, eqx.is_array)

    def local(sharded_, arrays_):
        out = body(sharded_, eqx.combine(arrays_, rest))
        block = jax.tree_util.tree_leaves(sharded_)[0].shape[0]
        # member-independent scalars (e.g. max_steps) get a member axis, to be concatenated
        return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (block,)) if jnp.ndim(v) == 0 else v, out)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec("members"), spec()), out_specs=spec("members"),
                         check_vma=False)(sharded, arrays)


# PI step control for the shared solve (see the module docstring).
_SHARED_PI = (("icoeff", 0.3), ("pcoeff", 0.3))


def _max_row_rms(count: int):
    """The error norm of the flat shared state: max over members (rows) of each member's RMS.

    ``count`` = k + 2, the size of a member's state (W, [ζ, u]) in its own simulate_flow run, so
    that a member's error is measured exactly as there (u is identically 0 in the time clock)."""

    def norm(err: jax.Array) -> jax.Array:
        return nan_to_inf(jnp.sqrt(jnp.max(jnp.sum(err**2, axis=1)) / count))

    return norm


@eqx.filter_jit
def _shared_solve(spec: FlowSpec, data: Data, params0, save_points, end, dt0, mesh=None) -> SegmentResult:
    """All members (of each device's block, with a ``mesh``) as one ODE with one step size."""

    def body(p0, shared):
        return _shared_body(p0, *shared)

    return _over_members(body, mesh, params0, (spec, data, save_points, end, dt0))


def _shared_body(params0, spec: FlowSpec, data: Data, save_points, end, dt0) -> SegmentResult:
    """All members as one ODE with one step size (time clock; ``spec.controller``'s norm is replaced
    by :func:`_max_row_rms`).

    The state is one (members, k + 1) array: row i = [W_i flattened, ζ_i]. One leaf instead of a
    PyTree of stacked layers keeps the solver's stage arithmetic (Tsit5: ~40 axpy-like ops per
    step) to one fused op per combination, and the error norm to one reduction."""
    args = FieldArgs(data.static, data.x, data.y, data.loss, spec.clock)
    flat0 = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(params0)
    members, k = flat0.shape
    unravel = jax.flatten_util.ravel_pytree(jax.tree_util.tree_map(lambda v: v[0], params0))[1]

    def member_field(row):
        d = vector_field(None, FlowState(unravel(row[:k]), None), args)
        return jnp.concatenate([jax.flatten_util.ravel_pytree(d.W)[0], d.aux[:1]])

    def field(t, state, args_):
        return jax.vmap(member_field)(state)

    def member_save(t, row):
        aux = jnp.stack([row[k], jnp.zeros((), row.dtype)])
        return spec.record.save(t, FlowState(unravel(row[:k]), aux), args)

    def save_fn(t, state, args_):
        return jax.vmap(lambda row: member_save(t, row))(state)

    saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=save_points, fn=save_fn),
                                  diffrax.SubSaveAt(t1=True, fn=save_fn), diffrax.SubSaveAt(t1=True)])
    controller = eqx.tree_at(lambda c: c.norm, spec.controller, _max_row_rms(k + 2))
    rtol, atol = controller.rtol, controller.atol
    y0 = jnp.concatenate([flat0, jnp.zeros((members, 1), flat0.dtype)], axis=1)
    if dt0 is None:  # the smallest of the members' own first steps
        term0 = diffrax.ODETerm(lambda t, row, a: member_field(row))
        order = spec.solver.error_order(term0)
        dt0 = jnp.min(jax.vmap(lambda row: initial_step(term0.vector_field, jnp.zeros((), row.dtype), row, None, order,
                                                        rtol, atol, end))(y0))
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), spec.solver, jnp.zeros((), data.x.dtype), end, dt0, y0, args=None,
                              saveat=saveat, stepsize_controller=controller, max_steps=spec.max_steps, throw=False)
    saved, final_diag, final_rows = sol.ys
    # to the per-member layout of the vmapped solve: member axis first
    saved = jax.tree_util.tree_map(lambda v: jnp.swapaxes(v, 0, 1), saved)
    final_diag = jax.tree_util.tree_map(lambda v: jnp.swapaxes(v, 0, 1), final_diag)
    rows = final_rows[0]
    final_params = jax.vmap(lambda r: unravel(r[:k]))(rows)
    final_aux = jnp.stack([rows[:, k], jnp.zeros((members,), rows.dtype)], axis=1)

    def each(v):
        return jnp.broadcast_to(v, (members, *jnp.shape(v)))

    return SegmentResult(saved, {}, final_diag, FlowState(final_params, final_aux), jax.tree_util.tree_map(each, sol.result),
                         {k_: each(v) for k_, v in sol.stats.items()}, each(sol.ts[1][-1]), None, None, None, None)


def simulate_ensemble(
    models,
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
    check_degree: bool = True,
    steps: str | None = None,
    sliding: bool | None = None,
    diagnostics: Diagnostics | None = None,
    run: RunOptions | None = None,
    **deprecated: Any,
) -> EnsembleResult:
    """Integrate the gradient flow of every model in ``models`` in one vmapped diffrax solve.

    ``models``: a sequence of models with the same architecture (different seeds or initial
    scales). The options mean what they mean in :func:`gradflow.simulate_flow` and are checked by
    the same functions (:mod:`gradflow.options`); the save points are shared (in the accuracy
    clock they start at the largest initial ln(n/L) of the members).
    ``steps``: 'per_member' (default) or 'shared' (time clock without ``until_accuracy`` only);
    see the module docstring. ``solver`` (None: chosen from the model's kinks as in
    :func:`gradflow.simulate_flow`) and ``sliding`` (None: on for a model with C⁰ kinks) mean what
    they mean there. Segmented features (``solver='auto'``, checkpoints, progress) and the
    extra diagnostics of :class:`gradflow.Diagnostics` are not available here: a ``diagnostics`` or
    ``run`` field that asks for them is refused.

    ``run=gradflow.RunOptions(devices=...)``: split the *members* over devices, 'all' or a list of
    jax devices (None: one device). Each device integrates its block of consecutive members on its
    own (``jax.shard_map`` over a 1-D mesh "members", no communication); with ``steps='shared'``
    the members of a block share one step size, so a result depends on how the members are blocked
    (to solver tolerance). A member count that is not a multiple of the device count is padded with
    copies of member 0, which are dropped. On a CPU with several cores, start Python with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` to get one device per core. The
    former flat keyword ``devices`` still works, with a ``DeprecationWarning``.
    """
    if not isinstance(models, (list, tuple)) or len(models) == 0:
        raise InvalidTypeError("models: expected a nonempty list of models. Pass e.g. [Linear(3, key=k) for k in keys].")
    _, run = grouped_options("simulate_ensemble", deprecated, diagnostics, run, supports=("devices",))
    solve = check_solve_options(clock=clock, t_max=t_max, until_accuracy=until_accuracy, rtol=rtol, atol=atol,
                                dt0=dt0, max_steps=max_steps, num_save=num_save, save_at=save_at)
    if isinstance(solver, str) and solver.lower() == "auto":
        raise bad_argument("solver", "'auto' switches solvers between segments, which a vmapped ensemble cannot do",
                           "Pass 'tsit5' or 'kvaerno5'.")
    steps = check_choice("steps", steps or "per_member", ("shared", "per_member"))
    if steps == "shared" and not (isinstance(solve.clock, TimeClock) and solve.until_accuracy is None):
        raise bad_argument("steps", "'shared' needs clock='time' without until_accuracy (members' clocks differ)",
                           "Use steps='per_member'.")
    save_params = check_bool("save_params", save_params)
    check_degree = check_bool("check_degree", check_degree)
    sliding = check_bool("sliding", sliding, allow_none=True)
    jacobian = check_choice("jacobian", jacobian, ("matrix_free", "dense"))
    if solver is not None:
        get_solver(solver, jacobian=jacobian)  # its name, checked before anything compiles
    mesh = None
    if run.devices is not None:
        devs = resolve_devices(run.devices)
        mesh = jax.sharding.Mesh(np.asarray(devs), ("members",)) if len(devs) > 1 else None
    with x64():
        first = prepare_problem(models[0], data, loss, "float64", check_degree, "simulate_ensemble")
        params0, log_loss0 = _prepare_members(models, first)
        loss_fn, n = first.loss, first.n
        num_params = sum(int(a.size) for a in jax.tree_util.tree_leaves(first.params0))
        field = field_kinks(first.params0, first.static, first.x)
        if steps == "shared" and field.sites.sliding and sliding is not False:
            raise bad_argument("steps", "'shared' integrates all members as one ODE with one step size, which cannot "
                               "slide along each member's kinks (this model has C⁰ kinks: ReLU)",
                               "Use steps='per_member' (the default), or pass sliding=False.")
        if field.sites.unsupported and field.sites.sliding and sliding is not False:
            raise bad_argument("models", f"member 0 (and so every member: they share one architecture) has a max "
                               f"inside a loop ({', '.join(field.sites.unsupported)}) whose pairs the sliding field "
                               "cannot re-evaluate", "Pass sliding=False, or write the loop out.")
        choice = choose_integration(field, solve.clock, Request(solver, None, sliding, None, jacobian), num_params,
                                    capacity=ENSEMBLE_CAPACITY, start=(first.params0, first.static, first.x))
        solver_obj = choice.solver
        acc0 = float(np.max(math.log(n) - log_loss0))  # the save points start at the latest member
        check_target(solve.until_accuracy, acc0)
        save_points = solve.save_points(acc0)
        members_n = len(models)
        s0 = jax.vmap(lambda v: jnp.asarray(solve.clock.start(loss_fn, v), jnp.float64))(jnp.asarray(log_loss0))
        f = lambda v: jnp.asarray(v, jnp.float64)  # noqa: E731
        start = time.perf_counter()
        dt = None if solve.dt0 is None else f(solve.dt0)
        target = None if solve.until_accuracy is None else f(solve.target_log_loss(n))
        log_t_max = None if solve.t_max is None else f(solve.log_t_max)
        stop = solve.clock.stop_condition(target, log_t_max)
        data = Data(first.static, first.x, first.y, loss_fn)
        if steps == "shared":
            spec = FlowSpec(solve.clock, solver_obj, diffrax.PIDController(rtol=f(solve.rtol), atol=f(solve.atol),
                                                                          **dict(_SHARED_PI)),
                            Record(first.degree, save_params), None, None, solve.max_steps)
            padded = params0 if mesh is None else _pad_members(params0, mesh.size)
            out = _shared_solve(spec, data, padded, f(save_points), f(solve.end), dt, mesh=mesh)
            parts = [(_host(out, members_n), np.arange(members_n))]
        else:
            controller = step_controller(f(solve.rtol), f(solve.atol), {"norm": error_norm, **choice.controller})
            spec = FlowSpec(solve.clock, solver_obj, controller, Record(first.degree, save_params, defer=True),
                            None if stop is None else diffrax.Event(stop), choice.sliding, solve.max_steps, batched=True,
                            max_capacity=choice.max_capacity)
            parts = _per_member_solves(spec, data, params0, s0, f(save_points), f(solve.end), dt, mesh, num_params)
        wall = time.perf_counter() - start
        config = dict(loss=loss_fn.name, clock=solve.clock.name, solver=type(solver_obj).__name__,
                      step_control=choice.step_control, sliding=choice.sliding is not None, rtol=solve.rtol,
                      atol=solve.atol, t_max=solve.t_max, until_accuracy=solve.until_accuracy, degree=first.degree,
                      n=n, max_steps=solve.max_steps, jacobian=jacobian, dtype="float64", ensemble_size=members_n,
                      steps=steps, ensemble_devices=1 if mesh is None else mesh.size, model_interface=first.interface)
        where = {int(i): (out, row) for out, members_of in parts for row, i in enumerate(members_of) if i >= 0}
        start_evals = evaluations_at_start(solver_obj, fresh_solver_state=True, choose_step=solve.dt0 is None)
        if choice.sliding is not None:  # the sliding solver evaluates its first stage at its start
            start_evals = 1 + (2 if solve.dt0 is None else 0)
        members = []
        for i in range(members_n):
            out, row = where[i]
            s_i = _member(out.saved, row)
            reached = np.isfinite(s_i["log_loss"])
            res_i = _member(out.result, row, as_numpy=False)
            slide_i = None if out.state.slide is None else jax.tree_util.tree_map(lambda v, r=row: v[r], out.state.slide)
            state_i = FlowState(jax.tree_util.tree_map(lambda v, r=row: jnp.asarray(v[r]), out.state.W),
                                jnp.asarray(out.state.aux[row]), slide_i)
            segment = Segment(
                saved={k: v[reached] for k, v in s_i.items()},
                final_diag={k: v[0] for k, v in _member(out.final, row).items()},
                final_state=state_i,
                result_name=result_name(res_i), reason=diffrax.RESULTS[res_i],
                stats={k: int(v[row]) for k, v in out.stats.items() if k != "max_steps"},
                wall=wall / members_n, num_save=len(save_points), evals_per_step=evaluations_per_step(solver_obj),
                start_evals=start_evals, solver_name=type(solver_obj).__name__,
                implicit_segments=int(is_implicit(solver_obj)),
            )
            ran_its_course = segment.result_name in ("successful", "event_occurred") and reached.sum() == len(save_points)
            if steps == "per_member" and ran_its_course:  # W at its clock's value at every save point, as in simulate_flow
                key = solve.clock.save_key
                fail_off_clock(segment, key, np.asarray(save_points)[reached],
                               float(np.reshape(out.initial[key][row], -1)[0]), solve.rtol)
            members.append(assemble([segment], first.static, first.degree, config=dict(config, member=i),
                                     throw=False, stop_reason=solve.clock.stop(solve.t_max, solve.until_accuracy)))
    return EnsembleResult(members=members, diagnostics=_stack(members),
                          stats={"wall_time": wall, "members": len(members), "solves": len(parts)})


def _per_member_solves(spec: FlowSpec, data: Data, params0, s0, save_points, end, dt0, mesh, num_params: int) -> list:
    """The members' own solves, vmapped (:func:`_ensemble_solve`): a list of (result, members), the
    result's leaves (:func:`_host`) with the members it ran along their leading axis, ``members`` their
    indices in the ensemble (−1 where a member's result is in a later solve).

    With sliding, the members start at the capacity of ``spec.sliding``. A member whose sliding set
    needs more ends its solve at that step (:class:`gradflow.controllers.StepGuard`, as a single run's
    segment ends for its driver to grow the capacity); the members that did are run again from their
    starts at twice the capacity, up to ``spec.max_capacity`` (where further entries are counted as
    overflow). Such a member's result is that of a run at the larger capacity from the start."""
    members = np.arange(s0.shape[0])
    parts = []
    while True:
        slide0 = None
        if spec.sliding is not None:  # every member starts with no sliding pair
            one = initial_slide(spec.sliding.max_pairs, num_params, jnp.float64)
            slide0 = jax.tree_util.tree_map(lambda v, m=members: jnp.broadcast_to(v, (m.size, *v.shape)), one)
        starts = (jax.tree_util.tree_map(lambda v, m=members: v[m], params0), s0[members], slide0)
        if mesh is not None:
            starts = _pad_members(starts, mesh.size)
        out = _host(_ensemble_solve(spec, data, *starts, save_points, end, dt0, mesh=mesh), len(members))
        again = np.asarray(out.stats["capacity_overflow"], bool)
        parts.append((out, np.where(again, -1, members)))
        if not again.any():
            return parts
        members = members[again]
        capacity = grown_capacity(spec.sliding.max_pairs, spec.max_capacity)
        spec = eqx.tree_at(lambda s: s.sliding, spec, spec.sliding.with_capacity(capacity))


def _host(out: SegmentResult, members: int) -> SegmentResult:
    """``out`` without the padding members, with what the members' results are read from copied to
    the host in one go (then numpy slicing per member: indexing the stacked jax arrays member by
    member cost ~1000 dispatched ops for 32 members); the diffrax result and the sliding state stay jax arrays."""
    out = jax.tree_util.tree_map(lambda v: v[:members] if eqx.is_array(v) else v, out)
    saved, final, stats, initial, W, aux = jax.tree_util.tree_map(
        np.asarray, (out.saved, out.final, out.stats, out.initial, out.state.W, out.state.aux))
    state = FlowState(W, aux, out.state.slide)
    return dataclasses.replace(out, saved=saved, final=final, stats=stats, initial=initial, state=state)


def _prepare_members(models, first):
    """Stacked float64 parameters and initial ln L of all members, checked like prepare_problem.

    Member 0 went through :func:`prepare_problem` (data, loss, degree); the others must have its
    architecture and fixed parts. Their finiteness checks and initial losses are one vmapped call
    instead of a prepare_problem per member (each ~10 ms of eager dispatch and tracing)."""
    treedef = jax.tree_util.tree_structure(first.params0)
    plist = [first.params0]
    for i, m in enumerate(models[1:], start=1):
        p, static = partition(first.wrap(m))
        if jax.tree_util.tree_structure(p) != treedef or not eqx.tree_equal(static, first.static):
            raise bad_argument("models", f"member {i} has another architecture or other fixed parts than member 0",
                               "Pass models that differ only in their trainable parameters.")
        plist.append(p)
    try:
        params0 = jax.tree_util.tree_map(lambda *a: jnp.stack([jnp.asarray(v, jnp.float64) for v in a]), *plist)
    except (TypeError, ValueError) as e:
        raise bad_argument("models", f"parameters of different shapes ({e})",
                           "Pass models that differ only in their trainable parameters.") from e
    finite_params, finite_out, log_loss0 = _member_checks(params0, first.static, first.x, first.y, first.loss)
    for flags, what, fix in ((finite_params, "initial parameters contain NaN or inf",
                              "Initialise the model with finite values."),
                             (finite_out, "outputs Φ(x; W_0) on data.x are not finite", "Check its weights.")):
        bad = np.flatnonzero(~np.asarray(flags))
        if bad.size:
            raise bad_argument("models", f"member {int(bad[0])}: {what}", fix)
    return params0, np.asarray(log_loss0, np.float64)


@eqx.filter_jit
def _member_checks(params0, static, x, y, loss):
    def one(p):
        out = combine(p, static)(x)
        return all_finite(p), all_finite(out), loss.log_loss(out, y)

    return jax.vmap(one)(params0)


def _pad_members(tree, devices: int):
    """Pad the leading (member) axis to a multiple of ``devices`` with copies of member 0."""
    members = jax.tree_util.tree_leaves(tree)[0].shape[0]
    extra = -members % devices
    if extra == 0:
        return tree
    return jax.tree_util.tree_map(lambda v: jnp.concatenate([v, jnp.repeat(v[:1], extra, axis=0)]), tree)


def _member(tree, i: int, as_numpy: bool = True):
    """Member ``i`` of a vmapped PyTree."""
    return jax.tree_util.tree_map(lambda v: np.asarray(v[i]) if as_numpy else v[i], tree)


def _stack(members: list[FlowResult]) -> dict[str, np.ndarray]:
    """Diagnostics of all members along a leading axis, NaN-padded to the longest."""
    T = max(len(m) for m in members)
    out = {}
    for k, v0 in members[0].diagnostics.items():
        arr = np.full((len(members), T) + v0.shape[1:], np.nan)
        for i, m in enumerate(members):
            v = m.diagnostics[k]
            arr[i, : len(v)] = v
        out[k] = arr
    return out
