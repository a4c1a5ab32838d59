"""What a flow records: the diagnostics at a save point (the paper's quantities, ζ, ln t and, with
sliding, the sliding diagnostics), and the sharpness along the save points after the loop."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp

from ..diagnostics import diagnostics
from ..sharpness import budget_points
from ..sharpness import sharpness as _sharpness
from .field import FieldArgs, field_point, sliding_diagnostics

__all__ = ["make_save_fn", "sharpness_along"]


def make_save_fn(clock: str, degree, save_params: bool):
    def save_fn(s, state, args: FieldArgs):
        params, aux = state[0], state[1]
        pt = field_point(state, args, clock)
        out = diagnostics(pt, params, args.y, args.loss, degree)
        out["path_length"] = aux[0]
        if clock == "time":
            out["log_t"] = jnp.log(s)
        else:
            out["log_t"] = jax.nn.softplus(s) + jnp.log(aux[1])  # u = t e^(−σ(α)), see the module docstring
        out["t"] = jnp.exp(out["log_t"])
        if args.sliding is not None:
            out.update(sliding_diagnostics(state, args, clock, pt))
        if save_params:
            out["params_flat"] = jax.flatten_util.ravel_pytree(params)[0]
        return out

    return save_fn


def sharpness_along(saved_params, initial_params, final_params, eigvec, saved, final_diag, initial_diag, static, x, y, loss, plan,
                     gradient_evaluations, subset=None):
    """λ_max(∇²L) (and λ_min) at the save points (a ``lax.scan`` warm-starting each power
    iteration from the previous point's eigenvector), at the segment's start (reported when no save
    point was reached) and at its final state, in that (chronological) order; the save points the
    solve did not reach (diffrax fills them with inf) are skipped and get NaN. With a budget
    (:class:`gradflow.sharpness.SharpnessPlan`) only the save points :func:`gradflow.sharpness.budget_points`
    selects are evaluated, and neither the start nor the final state; ``saved_params`` then holds
    W only at the save points ``subset`` (static indices), the others get NaN. Returns the diagnostics
    with the sharpness keys added and the eigenvector(s) for the next segment."""
    tol, max_iters, negative, budget = plan

    def at(params, vecs):
        v, v_min = vecs
        sh = _sharpness(params, static, x, y, loss, v, tol=tol, max_iters=max_iters, negative=negative, v0_min=v_min)
        out = {"sharpness": sh.sharpness, "log_sharpness": sh.log_sharpness, "sharpness_hvps": sh.hvps}
        if negative:
            out["min_eigenvalue"] = sh.min_eigenvalue
        return out, (sh.vector, sh.min_vector if negative else v_min)

    def skipped(vecs):
        nan = jnp.full((), jnp.nan, vecs[0].dtype)
        out = {"sharpness": nan, "log_sharpness": nan, "sharpness_hvps": jnp.zeros((), jnp.int32)}
        if negative:
            out["min_eigenvalue"] = nan
        return out, vecs

    def finite(params):
        return jnp.all(jnp.isfinite(jax.flatten_util.ravel_pytree(params)[0]))

    def step(vecs, item):
        params, take = item
        out, new = jax.lax.cond(take, lambda: at(params, vecs), lambda: skipped(vecs))
        return new, out

    reached = jax.vmap(finite)(saved_params)
    if budget is None:
        take, ends = reached, True
    else:
        take, ends = budget_points(reached, gradient_evaluations, budget), False
    vecs, first = step(eigvec, (initial_params, finite(initial_params) & ends))
    vecs, rows = jax.lax.scan(step, vecs, (saved_params, take))
    vecs, last = step(vecs, (final_params, finite(final_params) & ends))
    if subset is not None:  # back onto all save points: NaN (0 HVPs) where W was not kept
        num = saved["log_loss"].shape[0]
        rows = {k: jnp.full((num,), 0 if k == "sharpness_hvps" else jnp.nan, v.dtype).at[subset].set(v)
                for k, v in rows.items()}
    saved = {**saved, **rows}
    final_diag = {**final_diag, **jax.tree_util.tree_map(lambda v: v[None], last)}
    initial_diag = {**initial_diag, **jax.tree_util.tree_map(lambda v: v[None], first)}
    return saved, final_diag, initial_diag, vecs
