r"""The vector fields of the flow in its two clocks, and the diagnostics saved along it.

* time clock: dW/dt = −∇L = |ℓ'(α)| ∇α (Lemma C.2), dζ/dt = ‖∂_⊥L‖/‖W‖ (Lemma 3.4);
* accuracy clock: dW/dα = ∇α/‖∇α‖², dζ/dα = ‖∂_⊥α‖/(‖W‖ ‖∇α‖²), and u = t e^(−σ(α)) with
  du/dα = e^(−σ(α) − ln|ℓ'(α)|)/‖∇α‖² − sigmoid(α) u (see :mod:`gradflow.flow.simulate`).

With sliding (:mod:`gradflow.sliding`) ∇α is the sliding gradient v, the minimum-norm element of
the Clarke subdifferential of α on the kink surfaces the flow slides along, and the same formulas
hold with v in place of ∇α (the chain rule dα/dt = ⟨v, dW/dt⟩ of the paper's Lemma B.9).

State: ``(W, aux)`` with aux = [ζ, u] (u unused in the time clock), plus ``slide`` with sliding
or the :class:`gradflow.solvers.counting.Work` slot of an implicit solve; ``args`` is a :class:`FieldArgs`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
from jax import lax

from ..diagnostics import Point, evaluate
from ..losses import Loss
from ..sliding import DRIFT, SlideState, Sliding, active_count, any_fixed, project

__all__ = ["FieldArgs", "field_point", "time_field", "accuracy_field", "field_from_point", "clock_scale",
           "sliding_diagnostics"]


class FieldArgs(NamedTuple):
    """The ``args`` of the vector fields: the model's static part, the data, the loss and, with
    sliding, the :class:`gradflow.sliding.Sliding` of the model's kinks (None without)."""

    static: Any
    x: jax.Array
    y: jax.Array
    loss: Loss
    sliding: Sliding | None = None


def field_point(state, args: FieldArgs, clock: str = "time") -> Point:
    """α, ∇α (or the sliding gradient, when pairs slide: :meth:`gradflow.sliding.Sliding.project`)
    and their split at the state's W."""
    params = state[0]
    if args.sliding is None:
        return evaluate(params, args.static, args.x, args.y, args.loss)
    slide = state[2]
    return lax.cond(any_fixed(slide),
                    lambda: project(args.sliding, params, args.static, args.x, args.y, args.loss, slide,
                                    clock_scale(clock))[0],
                    lambda: evaluate(params, args.static, args.x, args.y, args.loss))


def _out(state, dparams, daux):
    """(dW, daux) and a zero derivative for the rest of the state (the sliding state, the Work
    slot of an implicit solve: both held fixed by the field and set between steps)."""
    return (dparams, daux, *(jax.tree_util.tree_map(jnp.zeros_like, rest) for rest in state[2:]))


def _time_from_point(pt: Point, state):
    speed = jnp.exp(pt.log_neg_dloss)
    dparams = jax.tree_util.tree_map(lambda g: speed * g, pt.grad_alpha)
    dzeta = speed * pt.perp_norm / pt.norm
    return _out(state, dparams, jnp.stack([dzeta, jnp.zeros_like(dzeta)]))


def _accuracy_from_point(pt: Point, state):
    aux = state[1]
    inv_sq = 1.0 / pt.grad_norm**2
    dparams = jax.tree_util.tree_map(lambda g: inv_sq * g, pt.grad_alpha)
    dzeta = pt.perp_norm * inv_sq / pt.norm
    du = jnp.exp(-jax.nn.softplus(pt.alpha) - pt.log_neg_dloss) * inv_sq - jax.nn.sigmoid(pt.alpha) * aux[1]
    return _out(state, dparams, jnp.stack([dzeta, du]))


def time_field(t, state, args: FieldArgs):
    return _time_from_point(field_point(state, args, "time"), state)


def accuracy_field(alpha, state, args: FieldArgs):
    return _accuracy_from_point(field_point(state, args, "accuracy"), state)


def field_from_point(clock: str):
    """(Point, state) → the clock's dy/ds from the Point's gradient (as the fields compute it)."""
    return _time_from_point if clock == "time" else _accuracy_from_point


def _speed(pt: Point):
    return jnp.exp(pt.log_neg_dloss)


def _inverse_square(pt: Point):
    return 1.0 / pt.grad_norm**2


def clock_scale(clock: str):
    """κ(pt) with dW/ds = κ · ∇α in the clock s: |ℓ'(α)| (time), 1/‖∇α‖² (accuracy). The same
    function object for a clock every time (it is a static argument of compiled code)."""
    return _speed if clock == "time" else _inverse_square


def sliding_diagnostics(state, args: FieldArgs, clock: str, pt: Point) -> dict:
    r"""The sliding diagnostics at a save point (``pt``: the field's Point there).

    * ``sliding_pairs``: |A|, the pairs sliding along their kink surface;
    * ``sliding_drift``: max over A of |z_s| / rms(z of its site), how far the state is from the
      surfaces it slides on (0 without sliding pairs);
    * ``chain_rule_residual``: |D_Ẇ α / ⟨v, Ẇ⟩ − 1|, the chain rule of the paper's Lemma B.9,
      dL/dt = −‖dW/dt‖² (equivalently dα/ds = ⟨v, dW/ds⟩ in either clock), with D_Ẇ α the
      one-sided directional derivative of the model's own α along the velocity Ẇ = κ v: at every
      pair within the band of :data:`gradflow.sliding.DRIFT` of its surface the side Ẇ moves into
      is taken (from one JVP of z), elsewhere the model's own derivative. For the minimum-norm
      velocity (tangent to the surfaces) it vanishes to rounding; a one-sided gradient used where
      the flow should slide makes it O(1)."""
    sliding = args.sliding
    params, slide = state[0], state[2]
    v = pt.grad_alpha
    kappa = clock_scale(clock)(pt)
    wdot = jax.tree_util.tree_map(lambda g: kappa * g, v)
    z, dz = jax.jvp(lambda p: sliding.kink_values(p, args.static, args.x, slide), (params,), (wdot,))
    scale = [jnp.sqrt(jnp.mean(zz**2)) for zz in z]
    near = tuple(jnp.abs(zz) <= DRIFT * sliding.rtol * sc for zz, sc in zip(z, scale, strict=True))
    sides = SlideState(tuple(jnp.zeros_like(zz) for zz in z), slide.lam,
                       tuple(jnp.where(nr, jnp.where(d > 0, 1.0, -1.0), 0.0) for nr, d in zip(near, dz, strict=True)),
                       *slide[3:])

    _, d_alpha = jax.jvp(lambda p: sliding.alpha(p, args.static, args.x, args.y, args.loss, sides), (params,), (wdot,))
    rate = kappa * pt.grad_norm**2
    drift = jnp.max(jnp.stack([jnp.max(jnp.where(a > 0.5, jnp.abs(zz) / sc, 0.0))
                               for a, zz, sc in zip(slide.active, z, scale, strict=True)]))
    # a float: diffrax fills the save points not reached with inf, which an integer cannot hold
    return {"sliding_pairs": active_count(slide).astype(drift.dtype), "sliding_drift": drift,
            "chain_rule_residual": jnp.abs(d_alpha / rate - 1.0)}
