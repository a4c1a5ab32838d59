r"""Step control for kink-dense vector fields: ReLU and max-pool networks from a random start.

For a ReLU or max-pool network, ∇L(W) jumps where a pre-activation z_ij(W) of example i and unit j
changes sign (or a max-pool argmax switches): the field of dW/dt = −∇L is piecewise smooth, with
thousands of switching surfaces crossed early in training. Across such a surface a Runge–Kutta step
of size h whose stages see the jump Δf at a fraction θ ∈ (0, 1) of the step makes a local error

    h Δf [(1 − θ) − Σ_{k: c_k > θ} b_k],

first order in h for every method, whatever its classical order; the bracket has mean zero over θ
for every method of order ≥ 2 (the order condition Σ_k b_k c_k = ½), so the errors of different
crossings add like a random walk rather than coherently. The embedded error estimate jumps by ~10⁶
at the first step that crosses a switch (measured on the hcnn of issue 12). diffrax's PID
controller reads that jump as the h^(p+1) error of a smooth field: it rejects the step, shrinks h
up to 5× and retries, usually across the same switch, so 30–48 % of all steps are rejected and
the cost grows like 1/tol.

:class:`KinkPIDController` accepts a step whose scaled error is below ``accept`` (default 10)
instead of 1; the step-size update is diffrax's, aiming at a scaled error of 1, so a step that
crossed a switch with error e ∈ [1, accept) is kept and the next one is shrunk by (1/e)^(1/q) as
after a rejection. On smooth stretches (error < 1) it is exactly diffrax's controller.
Measured (``benchmarks/nonsmooth.py``) on the hcnn transient: with Bosh3 it cuts the gradient
evaluations at equal error of W by 5–14× against Tsit5 with diffrax's controller, with ≤ 2 %
rejected steps.
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ..kinkmap import Kinks, find_kinks
from ..params import combine

__all__ = ["KinkPIDController", "KINK_ACCEPT", "FieldKinks", "field_kinks", "nonsmooth_primitives"]

KINK_ACCEPT = 10.0


class KinkPIDController(diffrax.PIDController):
    """diffrax's PIDController that keeps steps with scaled error below ``accept`` (≥ 1).

    Scaled error e = norm(err / (atol + rtol·max(|y0|, |y1|))), as in diffrax. e < 1: diffrax's
    accepted step. 1 ≤ e < accept: accepted, and the next step is diffrax's shrunk retry size,
    started from the end of this one. e ≥ accept (or NaN/inf): rejected as in diffrax."""

    accept: float = KINK_ACCEPT

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        keep, next_t0, next_t1, made_jump, state, result = super().adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )
        scaled = self.norm(jtu.tree_map(self._scale, y0, y1_candidate, y_error))
        lenient = jnp.invert(keep) & (scaled < self.accept)
        dt = next_t1 - next_t0  # diffrax's next step: grown if kept, shrunk if it rejected
        inv_prev, _prev_prev, at_dtmin = controller_state
        inv, prev_inv, _ = state
        state = (jnp.where(lenient, 1.0 / scaled, inv), jnp.where(lenient, inv_prev, prev_inv), at_dtmin)
        next_t0 = jnp.where(lenient, t1, next_t0)
        return keep | lenient, next_t0, next_t0 + dt, made_jump, state, result

    def _scale(self, y0, y1, err):
        # diffrax's scaling of the error (an overflowing candidate is measured against y0)
        y1 = jnp.where(jnp.isnan(y1).any(), y0, y1)
        return err / (self.atol + jnp.maximum(jnp.abs(y0), jnp.abs(y1)) * self.rtol)


# Primitives whose derivative jumps: ReLU (max), max-pooling (reduce_window_max / a generic
# reduce_window over max), absolute values, clipping, sorting.
_NONSMOOTH = frozenset({
    "max", "min", "reduce_max", "reduce_min", "argmax", "argmin", "abs", "sign", "clamp",
    "reduce_window_max", "reduce_window_min", "cummax", "cummin", "sort", "floor", "ceil", "round",
})


def _primitive_names(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitive_names(inner)
    return names


def nonsmooth_primitives(apply, params, x) -> list[str]:
    """The primitives with jumping derivatives in the forward pass ``apply(params, x)`` (traced
    with ``jax.make_jaxpr``, nothing runs): non-empty for ReLU, max-pool, abs, clip… networks,
    whose gradient flow is kink-dense from a random start; empty for linear and smooth nets."""
    closed = jax.make_jaxpr(apply)(params, x)
    return sorted(_primitive_names(closed.jaxpr) & _NONSMOOTH)


class FieldKinks(NamedTuple):
    """What the forward pass says about the field −∇L (:func:`field_kinks`).

    ``primitives``: the non-smooth primitives found; ``sites``: the elementwise ``max`` sites,
    each C⁰ (∇L jumps across it) or C¹ (its output is only squared: ∇L is continuous, only the
    Hessian jumps; :mod:`gradflow.kinkmap`)."""

    primitives: list[str]
    sites: Kinks

    @property
    def jumps(self) -> bool:
        """Whether ∇L jumps somewhere: a C⁰ ``max`` site, a ``max`` that could not be analysed
        (inside a loop), or another non-smooth primitive (max-pool, abs, min, sort, …)."""
        other = set(self.primitives) - {"max"}
        return bool(self.sites.sliding) or bool(self.sites.unsupported) or bool(other)


def field_kinks(params, static, x) -> FieldKinks:
    """The kinks of the field of the model ``combine(params, static)`` on the inputs ``x``.

    The step-control rule of :func:`gradflow.simulate_flow`: kink-aware control (Bosh3 with
    :class:`KinkPIDController`) when :attr:`FieldKinks.jumps`, else Tsit5 with diffrax's PID
    controller. A ReLU net, a max-pool or an ``abs`` make the field jump; a squared ReLU does not
    (the flow of Figure 1's network is C¹), and gets the smooth-field default."""
    arrays, rest = eqx.partition(static, eqx.is_array)

    def apply(p, a, x_):
        return combine(p, eqx.combine(a, rest))(x_)

    return FieldKinks(nonsmooth_primitives(lambda p, x_: apply(p, arrays, x_), params, x), find_kinks(apply, params, arrays, x))
