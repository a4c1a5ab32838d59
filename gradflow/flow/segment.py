r"""One compiled segment of a flow: ``diffrax.diffeqsolve`` of the flow's vector field from a
:class:`Start`, as a :class:`FlowSpec` says, to a :class:`SegmentResult`.

A run is a sequence of segments (:mod:`gradflow.flow.driver`: checkpoint chunks, the explicit
segments of ``solver='auto'``, resumed runs); every segment of a run goes through one compiled
:func:`solve`. What differs between segments (the start, the save points, the end, the steps
left) is traced; what shapes the compiled loop (the clock, the solver, the controller's
structure, what is recorded, ``max_steps``) is the static part of the spec.
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ..clock import Clock
from ..controllers import StepGuard, initial_step
from ..sliding import Sliding
from ..solvers import JVP_COST, at_tolerances, evaluations_per_step, is_implicit
from ..solvers.counting import CountingSolver, countable
from .field import Data, FieldArgs, vector_field
from .record import Record
from .sliding_solver import SlidingSolver
from .state import FlowState, error_norm, work_counts

__all__ = ["FlowSpec", "Start", "SegmentResult", "solve"]


class FlowSpec(eqx.Module):
    """How a segment integrates the flow.

    ``clock``: the :class:`gradflow.clock.Clock`; ``solver``: the diffrax solver (explicit, or an
    implicit one with a counting Newton root finder whose tolerances are the controller's);
    ``controller``: the step-size controller, with the run's tolerances rtol, atol as traced
    scalars and :func:`gradflow.flow.state.error_norm` as its norm, or ``diffrax.ConstantStepSize``;
    ``record``: what is saved (:class:`gradflow.flow.record.Record`); ``stop``: the condition
    of the stop before the end point (:meth:`gradflow.clock.Clock.event`'s, with its traced
    target) or None; ``sliding``: the model's kinks that slide
    (:class:`gradflow.sliding.Sliding`) or None; ``max_steps``: the static size of diffrax's loop;
    ``batched``: the solve runs under vmap (an ensemble's members); ``max_capacity``: the most
    sliding pairs the driver may grow the sliding solver's capacity to (a step that needs more
    than ``sliding.max_pairs`` below it ends the solve instead: :class:`gradflow.controllers.StepGuard`)."""

    clock: Clock
    solver: diffrax.AbstractSolver
    controller: diffrax.AbstractStepSizeController
    record: Record
    stop: diffrax.Event | None
    sliding: Sliding | None
    max_steps: int = eqx.field(static=True)
    batched: bool = eqx.field(static=True, default=False)
    max_capacity: int = eqx.field(static=True, default=0)


class Start(eqx.Module):
    """Where a segment starts: the state y (W, [ζ, u] and, with sliding, the sliding state), the
    clock value s, the solver and controller states carried over (None: fresh), the first step
    ``dt0`` (NaN: choose it, :func:`gradflow.controllers.initial_step`), the sharpness
    eigenvectors of the last segment and the activation pattern at its last save point."""

    state: FlowState
    s: jax.Array
    solver_state: Any = None
    controller_state: Any = None
    dt0: jax.Array | None = None
    eigvec: Any = None
    pattern: Any = None


class SegmentResult(eqx.Module):
    """What a segment computed: ``recorded`` diagnostics (:class:`gradflow.flow.record.Recorded`),
    the final state (without the work counter), diffrax's result and statistics (with
    ``extra_evaluations``, ``extra_jvps``: the work beyond one gradient per explicit stage, over
    every attempted step), the final clock value, the solver and controller states, the
    activation pattern at the last save point and the sharpness eigenvectors."""

    saved: dict
    initial: dict
    final: dict
    state: FlowState
    result: Any
    stats: dict
    s_final: jax.Array
    solver_state: Any
    controller_state: Any
    pattern: Any
    eigvec: Any


@eqx.filter_jit
def solve(spec: FlowSpec, data: Data, start: Start, save_points, end, budget=None) -> SegmentResult:
    r"""Integrate dy/ds = f(s, y) (:func:`gradflow.flow.field.vector_field`) from ``start`` to the
    clock's end point ``end`` (in the user's units: t, or ln(n/L)), saving at ``save_points``
    (same units), in one ``diffrax.diffeqsolve`` compiled once per spec structure.

    The state carries a work counter (:class:`gradflow.solvers.counting.Work`) when the solver
    spends network passes beyond one gradient per explicit stage: the sliding projections
    (:class:`gradflow.flow.sliding_solver.SlidingSolver`, outermost) and the Newton–GMRES stage
    solves of an implicit step (:class:`gradflow.solvers.counting.CountingSolver`). The step
    controller measures the error of W and [ζ, u] only.

    ``budget`` (a traced int, or None) bounds the attempted steps through
    :class:`gradflow.controllers.StepGuard`, which also stops a solve whose steps no longer move
    the clock and sums the work counter over every attempt, rejected ones included (diffrax keeps
    a solver's own state on accepted steps only). Without a budget ``start.dt0`` None means:
    choose the first step; with one the driver passes NaN for that (one trace either way).

    After the loop, still compiled: deferred diagnostics, activation patterns and the sharpness
    at the save points (:class:`gradflow.flow.record.Record`)."""
    clock, record = spec.clock, spec.record
    n = data.x.shape[0]
    term = diffrax.ODETerm(vector_field)
    s0 = start.s
    s1, ts = clock.span(data.loss, n, s0, end, save_points)
    counting = is_implicit(spec.solver) and countable(spec.solver)
    # the ODE state: W, [ζ, u] and, where a solver reports work beyond its stages, the work counter;
    # the sliding state is the sliding solver's own (gradflow.flow.sliding_solver)
    y0 = FlowState(start.state.W, start.state.aux)
    if spec.sliding is not None or counting:
        y0 = y0.with_work()
    controller, dt0, controller_state = spec.controller, start.dt0, start.controller_state
    adaptive = not isinstance(controller, diffrax.ConstantStepSize)
    # the band of the sliding pairs follows the controller's rtol
    sliding = None if spec.sliding is None else spec.sliding.at_tolerance(controller.rtol, controller.atol)
    args = FieldArgs(data.static, data.x, data.y, data.loss, clock, sliding)
    solver = spec.solver
    if counting:
        solver = CountingSolver(at_tolerances(solver, getattr(controller, "rtol", None), getattr(controller, "atol", None)))
    if sliding is not None:
        solver = SlidingSolver(solver, clock, start.state.slide, ts, batched=spec.batched,
                               can_grow=budget is not None and sliding.max_pairs < spec.max_capacity)
    if adaptive:
        rtol, atol = controller.rtol, controller.atol

        def choose():  # the first step, from (W, aux) (the work counter held fixed)
            def core_field(s, core, a):
                return solver.func(term, s, y0.with_core(core), a).core()

            return initial_step(core_field, s0, y0.core(), args, spec.solver.error_order(term), rtol, atol, s1 - s0)

        if dt0 is None:
            dt0 = choose()
        elif budget is not None:
            dt0 = jax.lax.cond(jnp.isnan(dt0), lambda: choose().astype(dt0.dtype), lambda: dt0)
    if budget is not None:
        # the driver's controller state is the inner controller's, without the guard's step count
        work = work_counts if y0.work is not None else None
        # fixed steps have no tolerances (NaN: an implicit solver given them has its own: gradflow.solvers.get_solver)
        nan = jnp.full((), jnp.nan, args.x.dtype)
        controller = StepGuard(controller, budget, getattr(controller, "rtol", nan), getattr(controller, "atol", nan),
                               error_norm, work)
        if controller_state is not None:
            controller_state = (controller_state, jnp.zeros((), jnp.int32), jnp.zeros((2,), args.x.dtype),
                                jnp.zeros((), bool))
    sol = diffrax.diffeqsolve(
        term, solver, s0, s1, dt0, y0, args=args, saveat=record.saveat(ts, sliding is not None),
        stepsize_controller=controller, event=spec.stop, max_steps=spec.max_steps, throw=False,
        solver_state=start.solver_state, controller_state=controller_state,
    )
    final = jax.tree_util.tree_map(lambda v: v[0], sol.ys[2])
    if sliding is None:
        rec = record.recorded(sol.ys, args)
        final_state = FlowState(final.W, final.aux)
    else:
        rec = record.recorded_sliding(sol.ys, args, sol.solver_state.keys, (start.state.slide, sol.solver_state.slide))
        final_state = FlowState(final.W, final.aux, sol.solver_state.slide)
    controller_state_out = sol.controller_state[0] if budget is not None else sol.controller_state
    # [gradient evaluations, JVPs] beyond the explicit stages, over every attempted step
    extra_work = sol.controller_state[2] if budget is not None else jnp.zeros((2,), args.x.dtype)
    pattern = None
    if record.patterns:
        rec, pattern = record.patterns_along(rec, start.state.W, final_state.W, start.pattern, args)
    eigvec = start.eigvec
    if record.sharpness is not None:
        rec, eigvec = record.sharpness_along(rec, sol.ys[4], (start.state.W, final_state.W), eigvec,
                                             _gradient_evaluations(sol, spec.solver, extra_work), args)
    stats = dict(sol.stats, extra_evaluations=extra_work[0], extra_jvps=extra_work[1],
                 capacity_overflow=sol.controller_state[3] if budget is not None else jnp.zeros((), bool))
    return SegmentResult(rec.saved, rec.initial, rec.final, final_state, sol.result, stats, sol.ts[1], sol.solver_state,
                         controller_state_out, pattern, eigvec)


def _gradient_evaluations(sol, solver, extra_work):
    """The solve's gradient evaluations, traced (as the driver counts them, less the ≤ 3 before
    the first step): for the sharpness budget."""
    per_step = evaluations_per_step(solver) or 0
    return sol.stats["num_steps"] * per_step + extra_work[0] + JVP_COST * extra_work[1]
