r"""The vector field of the flow in its clock (:mod:`gradflow.clock`): dy/ds for y a
:class:`~gradflow.flow.state.FlowState`.

With v = ∇α (Lemma C.2: −∇L = |ℓ'(α)| ∇α) and κ the clock's scale, dW/ds = κ v and d[ζ, u]/ds are
the clock's (:meth:`gradflow.clock.Clock.aux_rate`). With sliding (:mod:`gradflow.sliding`) v is
the sliding gradient, the minimum-norm element of the Clarke subdifferential of α on the kink
surfaces the flow slides along, and the same formulas hold with v in place of ∇α (the chain rule
dα/dt = ⟨v, dW/dt⟩ of the paper's Lemma B.9). ``slide`` and ``work`` have zero derivative.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..clock import Clock
from ..conv_layout import canonical_convs
from ..diagnostics import Point, evaluate
from ..losses import Loss
from ..params import combine
from ..sliding import Pattern, Sliding, active_count, project
from .state import FlowState

__all__ = ["Data", "FieldArgs", "field_point", "velocity", "vector_field", "sliding_diagnostics"]


class Data(eqx.Module):
    """The model's static part, the data and the loss: what the field needs of the problem."""

    static: Any
    x: jax.Array
    y: jax.Array
    loss: Loss


class FieldArgs(eqx.Module):
    """The ``args`` of the vector field: the model's static part, the data, the loss, the clock and,
    with sliding, the :class:`gradflow.sliding.Sliding` of the model's kinks (None without)."""

    static: Any
    x: jax.Array
    y: jax.Array
    loss: Loss
    clock: Clock
    sliding: Sliding | None = None

    def log_loss(self, W) -> jax.Array:
        """ln L(W) (one forward pass)."""
        return self.loss.log_loss(combine(W, self.static)(self.x), self.y)


def field_point(state: FlowState, args: FieldArgs) -> Point:
    """α, v (∇α, or, with ``state.slide``, the sliding gradient, which is ∇α where no pair slides
    or keeps a side: :meth:`gradflow.sliding.Sliding.project`) and their split at the state's W.
    (The solver of the sliding field holds the sliding state itself,
    :mod:`gradflow.flow.sliding_solver`; a state with one is what a save point is evaluated at.)

    With a sliding state the projected field is taken whether or not a pair is fixed, not ∇α in a
    second branch of a ``cond``: at the save points its extra cost is nothing, and the second branch
    was one more copy of the network's gradient for XLA to compile."""
    if args.sliding is None or state.slide is None:
        return evaluate(state.W, args.static, args.x, args.y, args.loss)
    return project(args.sliding, state.W, args.static, args.x, args.y, args.loss, state.slide, args.clock.scale,
                   signals=False).point


def velocity(pt: Point, state: FlowState, clock: Clock, speed=1.0) -> FlowState:
    """dy/ds from the point's gradient v: dW/ds = κ v, d[ζ, u]/ds from the clock, zero for the rest
    (at the clock's ``speed``: :meth:`gradflow.clock.Clock.speed`)."""
    kappa = clock.scale(pt, speed)
    dW = jax.tree_util.tree_map(lambda g: kappa * g, pt.grad_alpha)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, (state.slide, state.work))
    return FlowState(dW, clock.aux_rate(pt, state.aux, speed), *zeros)


def vector_field(s, state: FlowState, args: FieldArgs) -> FlowState:
    """dy/ds at (s, y): the flow's ODE in the clock of ``args``."""
    return velocity(field_point(state, args), state, args.clock)


def sliding_diagnostics(state: FlowState, args: FieldArgs, pt: Point) -> dict:
    r"""The sliding diagnostics at a save point (``pt``: the field's Point there).

    * ``sliding_pairs``: |A|, the pairs sliding along their kink surface;
    * ``sliding_drift``: max over A of |z_s| / rms(z of its site), how far the state is from the
      surfaces it slides on (0 without sliding pairs);
    * ``chain_rule_residual``: |D_Ẇ α / ⟨v, Ẇ⟩ − 1|, the chain rule of the paper's Lemma B.9,
      dL/dt = −‖dW/dt‖² (equivalently dα/ds = ⟨v, dW/ds⟩ in either clock), with D_Ẇ α the
      one-sided directional derivative of the model's own α along the velocity Ẇ = κ v, taken on
      the side of each pair that the path is on: a pair of A on the side Ẇ moves into (either: Ẇ
      is tangent to its surface), a pair that keeps a side on that side, any other pair on the
      side of its sign (at z = 0, the side Ẇ moves into; from one JVP of z). For the field gradflow
      integrates it vanishes to rounding and interpolation error; Ẇ not tangent to a surface of A
      makes it O(1).

      Why not the side Ẇ moves into at every pair within the band :data:`gradflow.sliding.DRIFT`
      of its surface (the rule before December 2026): a free pair a few rtol from its surface,
      crossing it, is on one side for the rest of the step, where α is smooth; taking the other
      side made the residual O(1) at save points that caught such a crossing. Measured on the tiny
      Figure 2's DenseNet from its random start (seed 1, 24 save points, 8–36 free pairs within
      10 rtol rms(z) of their surfaces at each, 3–27 of them crossing): 0.40 and 0.84 at some save
      points by that rule, at most 5.4e-3 by this one."""
    sliding = args.sliding
    params, slide = state.W, state.slide
    v = pt.grad_alpha
    kappa = args.clock.scale(pt)
    wdot = jax.tree_util.tree_map(lambda g: kappa * g, v)
    pattern = sliding.pattern(slide)
    z, dz = canonical_convs(lambda p, t: jax.jvp(lambda q: sliding.kink_values(q, args.static, args.x, pattern), (p,),
                                                   (t,)))(params, wdot)
    into = jnp.where(dz > 0, 1.0, -1.0)
    path_side = jnp.where(pattern.active | (z == 0), into, jnp.where(pattern.side != 0, pattern.side, jnp.sign(z)))
    sides = Pattern(jnp.zeros_like(pattern.active), path_side)
    _, d_alpha = canonical_convs(lambda p, t: jax.jvp(lambda q: sliding.alpha(q, args.static, args.x, args.y, args.loss,
                                                                              sides), (p,), (t,)))(params, wdot)
    rate = kappa * pt.grad_norm**2
    drift = jnp.max(jnp.where(pattern.active, jnp.abs(z) / sliding.site_scale(z), 0.0))
    # a float: diffrax fills the save points not reached with inf, which an integer cannot hold
    return {"sliding_pairs": active_count(slide).astype(drift.dtype), "sliding_drift": drift,
            "chain_rule_residual": jnp.abs(d_alpha / rate - 1.0)}
