r"""The compiled solve of one segment of a flow: ``diffrax.diffeqsolve`` with gradflow's step control,
its save points, events and the diagnostics computed after the loop (activation patterns,
sharpness), all inside one ``equinox.filter_jit``.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp

from .. import activations
from ..controllers import IMPLICIT_CONTROLLER, StepGuard, finite_rms_norm, initial_step, step_controller
from ..params import combine
from ..sharpness import budget_subset
from ..solvers import JVP_COST, evaluations_per_step, is_implicit
from ..solvers.counting import CountingSolver, add_work, countable, strip_work
from .field import FieldArgs, accuracy_field, clock_scale, field_from_point, time_field
from .record import make_save_fn, sharpness_along
from .sliding_solver import SlidingSolver

__all__ = ["solve"]


@eqx.filter_jit
def solve(params0, aux0, s0, solver_state, controller_state, static, x, y, save_points, t_end, target_log_loss, log_t_max, rtol, atol, dt0, *, loss, degree, clock, solver, max_steps, event_kind, controller_opts, save_params, defer_diagnostics=False, budget=None, patterns=False, pattern_prev=None, sharpness_opts=None, eigvec=None, sliding=None, slide0=None):
    args = FieldArgs(static, x, y, loss, sliding)
    n = x.shape[0]
    if clock == "time":
        term = diffrax.ODETerm(time_field)
        s1 = t_end
        ts = save_points
    else:
        term = diffrax.ODETerm(accuracy_field)
        # save points and target are given in ln(n/L); map them to α = ℓ⁻¹(n e^(−K)).
        s1 = loss.alpha_from_log_loss(jnp.log(n) - t_end)
        ts = jnp.clip(loss.alpha_from_log_loss(jnp.log(n) - save_points), s0, s1)
    save_fn = make_save_fn(clock, degree, save_params or patterns)  # patterns: W at the save points
    sharp_idx = None if sharpness_opts is None or sharpness_opts.budget is None else budget_subset(ts.shape[0])
    # defer_diagnostics: save the bare states at the save points and evaluate the diagnostics on
    # them after the loop (still inside this compiled function). Under vmap the save branch of
    # diffrax's loop runs for every member at every step, so deferring is much cheaper there.
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts, fn=(lambda s, state, args: (s, state)) if defer_diagnostics else save_fn),
            diffrax.SubSaveAt(t1=True, fn=save_fn),
            diffrax.SubSaveAt(t1=True),
            diffrax.SubSaveAt(t0=True, fn=save_fn),
            # sharpness: the bare W at the save points, for the warm-started scan after the loop
            # (a budgeted run keeps W only at a static subset of them: gradflow.sharpness.budget_subset)
            *([diffrax.SubSaveAt(ts=ts if sharp_idx is None else ts[sharp_idx], fn=lambda s, state, args: state[0])]
              if sharpness_opts is not None else []),
        ],
        solver_state=True,
        controller_state=True,
    )
    if event_kind == "log_loss":

        def cond(s, state, args, **kwargs):
            return args.loss.log_loss(combine(state[0], args.static)(args.x), args.y) <= target_log_loss

        event = diffrax.Event(cond)
    elif event_kind == "log_t":

        def cond(s, state, args, **kwargs):
            return jax.nn.softplus(s) + jnp.log(state[1][1]) >= log_t_max

        event = diffrax.Event(cond)
    else:
        event = None
    opts = dict(controller_opts)
    y0 = (params0, aux0)
    norm = finite_rms_norm
    work = None
    # implicit solves count their Newton–GMRES work in a Work slot at the end of the state
    # (gradflow.solvers.counting); with sliding after the sliding state, and both works add
    counting = is_implicit(solver) and countable(solver)
    if sliding is not None:
        # the sliding state (A, λ) has zero derivative and is set between steps: it is not part of
        # the error norm, nor of the initial step's scales
        y0 = (params0, aux0, slide0)
        norm = _state_norm
        work = _slide_work
    if counting:
        # the Work slot likewise: zero derivative, set by CountingSolver after each step
        y0 = add_work(y0, aux0.dtype)
        norm = _state_norm
        work = _slide_and_counted_work if sliding is not None else _counted_work
    if opts.get("constant", False):
        controller = diffrax.ConstantStepSize()
    else:
        if is_implicit(solver):  # kink control is for explicit steps (an implicit one fails its Newton solve)
            opts = {**IMPLICIT_CONTROLLER, **{k: v for k, v in opts.items() if k != "accept"}}
        controller = step_controller(rtol, atol, {"norm": norm, **opts})
        field2, y02 = term.vector_field, y0
        if len(y0) > 2:  # the sliding state or the Work slot: held fixed
            field2 = lambda t, y2, a: term.vector_field(t, (*y2, *y0[2:]), a)[:2]  # noqa: E731
            y02 = y0[:2]
        if dt0 is None:
            dt0 = initial_step(field2, s0, y02, args, solver.error_order(term), rtol, atol, s1 - s0)
        elif budget is not None:  # the driver passes dt0 = NaN for "choose it here": one trace either way
            dt0 = jax.lax.cond(jnp.isnan(dt0), lambda: initial_step(field2, s0, y02, args, solver.error_order(term),
                                                                     rtol, atol, s1 - s0).astype(dt0.dtype), lambda: dt0)
    if budget is not None:
        # a traced step budget and a no-progress stop (gradflow/controllers/guard.py); the driver's
        # controller state is the inner controller's, without the guard's step count
        controller = StepGuard(controller, budget, rtol, atol, norm, work)
        if controller_state is not None:
            controller_state = (controller_state, jnp.zeros((), jnp.int32), jnp.zeros((2,), rtol.dtype))
    solver_used = solver
    if sliding is not None:
        solver_used = SlidingSolver(solver_used, field_from_point(clock), clock_scale(clock), clock)
    if counting:  # outermost: it reads the ESDIRK's stages from dense_info, which SlidingSolver passes on
        solver_used = CountingSolver(solver_used)
    sol = diffrax.diffeqsolve(
        term,
        solver_used,
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
        solver_state=solver_state,
        controller_state=controller_state,
    )
    saved, final_diag, final_state, initial_diag = sol.ys[:4]
    if defer_diagnostics:
        saved_s, saved_states = saved
        saved = jax.vmap(lambda s_, st: save_fn(s_, st, args))(saved_s, saved_states)
    final_state = strip_work(jax.tree_util.tree_map(lambda v: v[0], final_state))
    controller_state_out = sol.controller_state[0] if budget is not None else sol.controller_state
    # [gradient evaluations, JVPs] beyond the explicit stages, over every attempted step
    extra_work = sol.controller_state[2] if budget is not None else jnp.zeros((2,), x.dtype)
    pattern_carry = None
    if patterns:  # gradflow.activations: counted after the loop from W at the save points
        unravel = jax.flatten_util.ravel_pytree(params0)[1]
        rows, first, last, pattern_carry = activations.segment_counts(
            jax.vmap(unravel)(saved["params_flat"]), jnp.isfinite(saved["log_loss"]), params0, final_state[0],
            pattern_prev, static, x)
        if not save_params:
            saved, initial_diag, final_diag = ({k: v for k, v in d.items() if k != "params_flat"}
                                               for d in (saved, initial_diag, final_diag))
        saved = {**saved, **rows}
        initial_diag = {**initial_diag, **{k: v[None] for k, v in first.items()}}
        final_diag = {**final_diag, **{k: v[None] for k, v in last.items()}}
    if sharpness_opts is not None:
        saved, final_diag, initial_diag, eigvec = sharpness_along(
            sol.ys[4], params0, final_state[0], eigvec, saved, final_diag, initial_diag, static, x, y, loss, sharpness_opts,
            _gradient_evaluations(sol, solver, extra_work), sharp_idx)
    stats = dict(sol.stats, extra_evaluations=extra_work[0], extra_jvps=extra_work[1])
    return (saved, final_diag, final_state, sol.result, stats, sol.ts[1], sol.solver_state, controller_state_out,
            initial_diag, pattern_carry, eigvec)


def _slide_work(y) -> jax.Array:
    return jnp.stack([y[2].work, jnp.zeros_like(y[2].work)])


def _counted_work(y) -> jax.Array:
    return y[-1].counts


def _slide_and_counted_work(y) -> jax.Array:
    return _slide_work(y) + _counted_work(y)


def _state_norm(tree) -> jax.Array:
    """The error norm of a state with sliding: that of (W, aux), as without."""
    return finite_rms_norm(tree[:2])


def _gradient_evaluations(sol, solver, extra_work):
    """The solve's gradient evaluations, traced (as the driver counts them, less the ≤ 3 before
    the first step): for the sharpness budget."""
    per_step = evaluations_per_step(solver) or 0
    return sol.stats["num_steps"] * per_step + extra_work[0] + JVP_COST * extra_work[1]
