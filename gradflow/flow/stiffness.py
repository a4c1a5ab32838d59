"""Stiffness of the flow for ``solver='auto'``: |λ_max| of the Jacobian of the vector field with
respect to W, by power iteration on Jacobian-vector products (in physical time, Hessian-vector
products of L)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp

from .field import FieldArgs, vector_field
from .state import FlowState

__all__ = ["top_eigenvalue"]


def top_eigenvalue(args: FieldArgs, state: FlowState, s, iters: int = 30) -> float:
    """|λ_max| of ∂(dW/ds)/∂W at (s, y) (``iters`` power steps from a fixed start vector)."""
    return float(_power_iteration(args, state, s, iters))


@eqx.filter_jit
def _power_iteration(args, state, s, iters):
    def jv(v):
        return jax.jvp(lambda p: vector_field(s, FlowState(p, state.aux, state.slide), args).W, (state.W,), (v,))[1]

    flat, unravel = jax.flatten_util.ravel_pytree(state.W)
    v0 = unravel(jnp.cos(jnp.arange(flat.size, dtype=flat.dtype) * 1.3) + 0.5)

    def body(_, carry):
        v, _lam = carry
        w = jv(v)
        wn = jnp.linalg.norm(jax.flatten_util.ravel_pytree(w)[0])
        lam = wn / jnp.linalg.norm(jax.flatten_util.ravel_pytree(v)[0])
        return jax.tree_util.tree_map(lambda a: a / wn, w), lam

    return jax.lax.fori_loop(0, iters, body, (v0, jnp.zeros((), flat.dtype)))[1]
