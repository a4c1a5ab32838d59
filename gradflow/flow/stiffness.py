"""Stiffness of the flow for ``solver='auto'``: |λ_max| of the Jacobian of the vector field with
respect to W, by gradflow's one power iteration (:func:`gradflow.sharpness.power_iteration`, a
fixed number of steps) on Jacobian-vector products (in physical time, Hessian-vector products of L)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.flatten_util

from ..sharpness import initial_vector, power_iteration
from .field import FieldArgs, vector_field
from .state import FlowState

__all__ = ["top_eigenvalue"]


def top_eigenvalue(args: FieldArgs, state: FlowState, s, iters: int = 30) -> float:
    """|λ_max| of ∂(dW/ds)/∂W at (s, y): the gain ‖Jv‖/‖v‖ after ``iters`` power steps from the
    fixed start vector :func:`gradflow.sharpness.initial_vector`."""
    return float(_power_iteration(args, state, s, iters))


@eqx.filter_jit
def _power_iteration(args, state, s, iters):
    flat, unravel = jax.flatten_util.ravel_pytree(state.W)

    def matvec(v):
        jv = jax.jvp(lambda p: vector_field(s, FlowState(p, state.aux, state.slide), args).W, (state.W,), (unravel(v),))[1]
        return jax.flatten_util.ravel_pytree(jv)[0]

    return power_iteration(matvec, initial_vector(flat.size, flat.dtype, unit=False), tol=None, max_iters=iters).gain
