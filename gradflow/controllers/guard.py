r"""A step-size controller wrapper that bounds a solve: a traced step budget and a no-progress check.

diffrax's ``max_steps`` is static (a Python int that shapes the compiled loop), so a driver that
gives each segment of a run the steps the run has left would compile the solve once per distinct
budget. :class:`StepGuard` counts the attempted steps itself, against a *traced* budget, and stops
the solve with ``RESULTS.max_steps_reached`` when it is spent: one compiled solve serves every
segment, checkpoint chunk and resumed run.

It also stops a solve that cannot make progress. A step h with |h| ≤ 16·eps·|s| moves the clock
s by at most 16 units in the last place of float64 (eps = 2.2e-16): s + h rounds to s, or nearly,
and the controller, which grows the next step from the length of the last one, never recovers.
Measured (issue 14): a logistic-loss run in the accuracy clock from ln L(W₀) = 5.5 took a first
step of 2e-105 at α₀ = −251 (spacing 3e-14) and then 100,000 zero-length "accepted" steps. The
guard ends such a solve after the first such step with ``RESULTS.dt_min_reached``; the driver
turns that into ``status='failed'`` with a reason naming the clock value and the step.
"""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp

__all__ = ["StepGuard", "STALL_ULPS"]

# A step of at most this many float64 spacings of the clock value counts as no progress.
STALL_ULPS = 16.0


class StepGuard(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps a diffrax step-size controller; its state is ``(inner state, attempted steps, work,
    overflowed)``, work = [gradient evaluations, JVPs] (shape (2,)).

    Attributes:
      controller: the wrapped controller (a PIDController or ConstantStepSize).
      budget: the most attempted steps of this solve (an integer array, traced).
      rtol, atol, norm: the wrapped controller's tolerances (None for fixed steps) and error norm,
        which diffrax hands to an implicit solver's root finder (whose tolerances are the
        controller's: :func:`gradflow.solvers.get_solver`; diffrax reads them from adaptive
        controllers only).
      work: None, or y1_candidate ↦ [gradient evaluations, Jacobian-vector products, overflow] a
        solver spent on an attempted step beyond its explicit stages (:class:`gradflow.flow.sliding_solver.SlidingSolver`'s
        projections, the Newton–GMRES stage solves of :class:`gradflow.solvers.counting.CountingSolver`);
        summed in the state over every attempt, rejected ones included, since diffrax keeps a
        solver's own state only on accepted steps. An attempt that overflowed the sliding solver's
        capacity is rejected and ends the solve (``RESULTS.max_steps_rejected``), with
        ``overflowed`` set: the state is that of the last accepted step, from which the driver
        continues with a larger capacity.
    """

    controller: Any
    budget: Any
    rtol: Any
    atol: Any
    norm: Any = eqx.field(static=True, default=None)
    work: Any = eqx.field(static=True, default=None)

    def wrap(self, direction):
        return StepGuard(self.controller.wrap(direction), self.budget, self.rtol, self.atol, self.norm, self.work)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, (state, jnp.zeros((), jnp.int32), jnp.zeros((2,), jnp.result_type(t0)), jnp.zeros((), bool))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        inner, count, total, overflowed = controller_state
        overflow = jnp.zeros((), bool)
        if self.work is not None:  # extra work the solver reports for this attempt
            reported = self.work(y1_candidate).astype(total.dtype)
            total = total + reported[:2]
            overflow = reported[2] > 0
        keep, next_t0, next_t1, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner)
        count = count + 1
        eps = jnp.finfo(jnp.result_type(next_t0)).eps
        stalled = jnp.abs(next_t1 - next_t0) <= STALL_ULPS * eps * jnp.maximum(jnp.abs(next_t0), jnp.abs(next_t1))
        ok = result == diffrax.RESULTS.successful
        result = diffrax.RESULTS.where(ok & stalled, diffrax.RESULTS.dt_min_reached, result)
        ok = result == diffrax.RESULTS.successful
        result = diffrax.RESULTS.where(ok & (count >= self.budget), diffrax.RESULTS.max_steps_reached, result)
        keep = keep & ~overflow
        result = diffrax.RESULTS.where(overflow, diffrax.RESULTS.max_steps_rejected, result)
        return keep, next_t0, next_t1, made_jump, (inner, count, total, overflowed | overflow), result
