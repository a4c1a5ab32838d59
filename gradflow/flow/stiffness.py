"""Stiffness of the flow for ``solver='auto'``: |λ_max| of the Jacobian of the vector field with
respect to W, by power iteration on Jacobian-vector products."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp

from .field import FieldArgs, accuracy_field, time_field

__all__ = ["top_eigenvalue"]


def top_eigenvalue(params, aux, s, common, iters: int = 30, slide=None) -> float:
    """|λ_max| of the Jacobian of the vector field w.r.t. W (power iteration on Jacobian-vector
    products; in physical time these are Hessian-vector products of L)."""
    field = time_field if common["clock"] == "time" else accuracy_field
    args = FieldArgs(common["static"], common["x"], common["y"], common["loss"], common.get("sliding"))
    return float(_power_iteration(field, params, aux, s, args, iters, slide))


@eqx.filter_jit
def _power_iteration(field, params, aux, s, args, iters, slide=None):
    rest = (aux,) if slide is None else (aux, slide)

    def jv(v):
        return jax.jvp(lambda p: field(s, (p, *rest), args)[0], (params,), (v,))[1]

    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v0 = unravel(jnp.cos(jnp.arange(flat.size, dtype=flat.dtype) * 1.3) + 0.5)

    def body(_, carry):
        v, _lam = carry
        w = jv(v)
        wn = jnp.linalg.norm(jax.flatten_util.ravel_pytree(w)[0])
        lam = wn / jnp.linalg.norm(jax.flatten_util.ravel_pytree(v)[0])
        return jax.tree_util.tree_map(lambda a: a / wn, w), lam

    return jax.lax.fori_loop(0, iters, body, (v0, jnp.zeros((), flat.dtype)))[1]
